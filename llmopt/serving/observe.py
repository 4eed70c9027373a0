"""What watches each load level beside its requests: the server's /metrics, the over-saturation stop, the client's
own lag and CPU, and the answers kept for quality. `Observing` is the level loop's hooks: one `LevelObserver` per
level, whose figures go into the level's summary (and its warnings, where the level was stopped or client-bound)."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from llmopt.serving import saturation, scrape, selfcheck
from llmopt.serving.client import RequestResult
from llmopt.serving.loadtest import LevelHooks, LevelRun

T = TypeVar("T")


@dataclass
class Observing(LevelHooks):
    """The test-wide settings; one scraper for the whole test (a /metrics found gone stays gone)."""

    scraper: scrape.Scraper | None
    saturation_stop: bool = True
    lag_threshold_ms: float = selfcheck.LAG_THRESHOLD_MS
    cpu_limit: float = selfcheck.CPU_LIMIT
    summaries: dict[str, str] = field(default_factory=dict)  # the dataset's reference summaries by payload id
    reference: dict[str, dict[str, Any]] | None = None  # an offline run's completed documents by id
    reference_identity: dict[str, Any] = field(default_factory=dict)  # that run's settings
    answers_by_level: list[tuple[str, list[Any]]] = field(default_factory=list)  # loadquality.Answer, for consistency
    current: LevelObserver | None = None
    # Quality-aware goodput (with a reference): the SLO and the least ROUGE-L an answer needs against the reference's
    slo: Any = None
    quality_floor: float | None = None
    steady_state_s: tuple[float, float] = (0.0, 0.0)  # the level's --warmup-s and --cooldown-s

    @property
    def collect_text(self) -> bool:  # type: ignore[override]
        return bool(self.summaries)

    def start(self, level: LevelRun) -> None:
        self.current = LevelObserver(self, level.folder)

    def on_result(self, result: Any) -> None:
        if self.current is not None:
            self.current.on_result(result)

    def halted(self) -> str | None:
        return None if self.current is None else self.current.saturated

    async def around(self, work: Any) -> Any:
        assert self.current is not None
        return await self.current.run(work)

    def finish(self, level: LevelRun, results: list[Any], figures: dict[str, Any]) -> None:
        assert self.current is not None
        figures.update(self.current.figures(f"{level.bin} {level.mode} {level.value:g}"))
        if self.reference and self.quality_floor is not None and self.slo is not None:
            from llmopt.serving import loadquality
            from llmopt.serving.stats import steady_state

            every = [r for r in results if not r.warmup and not r.cut_off]
            measured = steady_state(every, *self.steady_state_s)
            figures.update(loadquality.quality_goodput(measured, self.slo, self.reference, self.quality_floor,
                                                       figures["window_s"]))  # fmt: skip
        if figures["saturated"]:
            figures["warnings"].append(f"stopped early: {figures['saturated']}")
        if figures["client"]["client_bound"]:
            figures["warnings"].append(
                f"client-bound (its figures measure the load generator too): {figures['client']['client_bound']}"
            )
        self.current = None


@dataclass
class LevelObserver:
    settings: Observing
    folder: Path
    series: scrape.Series = field(default_factory=scrape.Series)
    watch: saturation.Watch = field(default_factory=saturation.Watch)
    client: selfcheck.ClientWatch = field(default_factory=selfcheck.ClientWatch)
    answers: list[Any] = field(default_factory=list)  # loadquality.Answer of measured, successful requests
    send_lags_s: list[float] = field(default_factory=list)
    queue_waits_s: list[float] = field(default_factory=list)

    @property
    def saturated(self) -> str | None:
        return self.watch.reason if self.settings.saturation_stop else None

    def on_result(self, result: RequestResult) -> None:
        if result.late_s is not None and not result.warmup:
            # The client's lag alone says whether it kept up; with the wait for a slot, whether the queue grows.
            queued = result.queued_s or 0.0
            self.send_lags_s.append(result.late_s)
            if result.queued_s is not None:
                self.queue_waits_s.append(queued)
            self.watch.on_send(result.start_s, result.late_s + queued)
        if result.ok and not result.warmup and result.text is not None:
            from llmopt.serving.loadquality import Answer

            self.answers.append(Answer(result.payload_id, result.document, result.turn, result.prefix_group,
                                       result.prompt_key, result.text))  # fmt: skip

    def _on_scrape(self, t: float, values: dict[str, float]) -> None:
        waiting = scrape.pick(values, scrape.GAUGES["waiting_requests"])
        if waiting is not None:
            self.watch.on_waiting(t, waiting)

    async def run(self, work: Awaitable[T]) -> T:
        """Await the level's requests with the scraper and the client's probes running beside them."""
        scraper = self.settings.scraper
        with open(self.folder / "server_metrics.jsonl", "w", encoding="utf-8") as sink:
            if scraper is not None:
                scraper.start(self.series, sink, self._on_scrape)
            try:
                return await self.client.run(work)
            finally:
                if scraper is not None:
                    scraper.stop()

    def figures(self, label: str) -> dict[str, Any]:
        """The level's observed figures; its answers are scored and kept for the consistency check across levels."""
        from llmopt.serving import loadquality

        self.settings.answers_by_level.append((label, self.answers))
        scraper = self.settings.scraper
        notes = scraper.notes if scraper is not None else ["server metrics not scraped (--no-server-metrics)"]
        return {
            "server_metrics": scrape.summarize(self.series, notes),
            "client": selfcheck.figures(
                self.client, self.send_lags_s, self.settings.lag_threshold_ms, self.settings.cpu_limit, self.queue_waits_s
            ),
            "saturated": self.saturated,
            "quality": loadquality.score_level(self.answers, self.settings.summaries, self.settings.reference),
        }
