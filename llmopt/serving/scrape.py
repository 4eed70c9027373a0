"""The server's own view of a load level: its Prometheus /metrics, read about once a second while the level runs.

Parsing is prometheus_client's text parser. Gauges (running and waiting requests, KV-cache usage) are kept as a time
series and summarized by mean and max; counters (preemptions, prefix-cache hits and queries, tokens) as the level's
end minus its start. Names are vLLM's, with SGLang's and TGI's where they differ; every other counter and gauge the
server exports is kept in the series too, summed over its labels. A /metrics that is missing, unreachable or not
Prometheus text (an HTML page) leaves a note, never a failure: the load test goes on without it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Our name -> the names servers export (family names, as prometheus_client reports them: counters without _total).
GAUGES: dict[str, tuple[str, ...]] = {
    "running_requests": ("vllm:num_requests_running", "sglang:num_running_reqs", "tgi_batch_current_size"),
    "waiting_requests": ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size"),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
}
COUNTERS: dict[str, tuple[str, ...]] = {
    "preemptions": ("vllm:num_preemptions",),
    "prefix_cache_queries": ("vllm:prefix_cache_queries",),  # tokens looked up in the prefix cache
    "prefix_cache_hits": ("vllm:prefix_cache_hits",),  # of which found there
    "prompt_tokens_cached": ("vllm:prompt_tokens_cached",),  # prompt tokens served from the prefix cache
    "prompt_tokens": ("vllm:prompt_tokens", "sglang:prompt_tokens", "tgi_request_input_length_sum"),
    "generation_tokens": ("vllm:generation_tokens", "sglang:generation_tokens", "tgi_request_generated_tokens_sum"),
    "finished_requests": ("vllm:request_success", "sglang:num_requests", "tgi_request_success"),
}
# Gauges that are a share (one value per engine): averaged over labels, not summed.
SHARES = {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"}


SETTLE_S = 0.5


class NotPrometheus(ValueError):
    pass


def metrics_url(base_url: str) -> str:
    root = base_url.rstrip("/")
    return (root[: -len("/v1")] if root.endswith("/v1") else root) + "/metrics"


def parse(text: str) -> dict[str, float]:
    """Every counter and gauge of a Prometheus text page, and each histogram's _sum and _count, summed over labels
    (shares averaged)."""
    from prometheus_client.parser import text_string_to_metric_families

    if text.lstrip().startswith("<"):
        raise NotPrometheus("an HTML page, not Prometheus text")
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.type in ("histogram", "summary"):  # their running sum and count are counters (TGI's token totals)
                for part in ("_sum", "_count"):
                    samples = [s.value for s in family.samples if s.name == family.name + part]
                    if samples:
                        values[family.name + part] = sum(samples)
                continue
            if family.type not in ("counter", "gauge"):
                continue
            wanted = family.name + "_total" if family.type == "counter" else family.name
            samples = [s.value for s in family.samples if s.name in (wanted, family.name)]
            if samples:
                values[family.name] = sum(samples) / len(samples) if family.name in SHARES else sum(samples)
    except ValueError as exc:
        raise NotPrometheus(f"not Prometheus text ({str(exc).splitlines()[0][:80]})") from None
    return values


def pick(values: dict[str, float], names: tuple[str, ...]) -> float | None:
    return next((values[n] for n in names if n in values), None)


@dataclass
class Series:
    """One level's scrapes: seconds since the level started, and what each scrape read."""

    times: list[float] = field(default_factory=list)
    values: list[dict[str, float]] = field(default_factory=list)

    def gauge(self, name: str) -> list[tuple[float, float]]:
        return [(t, v) for t, row in zip(self.times, self.values, strict=True) if (v := pick(row, GAUGES[name])) is not None]


def summarize(series: Series, notes: list[str]) -> dict[str, Any]:
    """A level's server metrics: gauges by mean and max, counters as end minus start, the prefix-cache hit rate."""
    out: dict[str, Any] = {"scrapes": len(series.times), "notes": list(notes), "gauges": {}, "counters": {}}
    if not series.values:
        return out
    first, last = series.values[0], series.values[-1]
    out["source"] = next((p for p in ("vllm", "sglang", "tgi") if any(k.startswith(p) for k in last)), "other")
    for name in GAUGES:
        points = [v for _, v in series.gauge(name)]
        if points:
            out["gauges"][name] = {"mean": sum(points) / len(points), "max": max(points), "last": points[-1]}
    for name, names in COUNTERS.items():
        start, end = pick(first, names), pick(last, names)
        if start is not None and end is not None:
            out["counters"][name] = end - start
    hits, queries = out["counters"].get("prefix_cache_hits"), out["counters"].get("prefix_cache_queries")
    out["prefix_cache_hit_rate"] = hits / queries if hits is not None and queries else None
    return out


class Scraper:
    """Reads /metrics on a thread of its own (the event loop that times requests never waits on it) and writes each
    scrape as a line of `sink`. `on_scrape(t, values)` sees each one as it comes (the over-saturation watch)."""

    def __init__(self, base_url: str, api_key: str | None = None, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self.url = metrics_url(base_url)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.gone: str | None = None  # why the server has no usable /metrics: the rest of the test skips scraping
        self.notes: list[str] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def read(self) -> dict[str, float]:
        request = urllib.request.Request(self.url, headers=self.headers)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return parse(response.read().decode("utf-8", "replace"))

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _once(self, series: Series, sink: Any, start: float, on_scrape: Callable[[float, dict[str, float]], None]) -> bool:
        """One scrape into the level's series and file; False once /metrics is known to be no use."""
        try:
            values = self.read()
        except urllib.error.HTTPError as exc:
            self.gone = f"{self.url} answered HTTP {exc.code}"
        except NotPrometheus as exc:
            self.gone = f"{self.url} returned {exc}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            self._note(f"{self.url} unreachable at times ({reason}): gaps in the server metrics")
            return True
        else:
            t = time.perf_counter() - start
            series.times.append(t)
            series.values.append(values)
            sink.write(json.dumps({"t_s": round(t, 4), **values}) + "\n")
            sink.flush()
            on_scrape(t, values)
            return True
        self._note(self.gone + ": no server metrics")
        return False

    def _loop(self, series: Series, sink: Any, start: float, on_scrape: Callable[[float, dict[str, float]], None]) -> None:
        tick = start
        while True:
            tick += self.interval_s
            if self._stop.wait(max(0.0, tick - time.perf_counter())):
                # One more scrape once the level is over, so that the counters end with it. vLLM counts a request
                # just after streaming its last chunk: the client can have it before the counter moves.
                time.sleep(SETTLE_S)
                self._once(series, sink, start, on_scrape)
                return
            if not self._once(series, sink, start, on_scrape):
                return

    def start(self, series: Series, sink: Any, on_scrape: Callable[[float, dict[str, float]], None] = lambda t, v: None) -> None:
        """Scrape once now (the counters' start, before the level's first request), then on a thread until stop();
        `series` and `sink` belong to the level. Nothing happens once /metrics is known gone."""
        if self.gone:
            return
        start = time.perf_counter()
        if not self._once(series, sink, start, on_scrape):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(series, sink, start, on_scrape), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Take the last scrape (after SETTLE_S) and end the thread; the counters' end is that scrape."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=SETTLE_S + self.timeout_s + 1)
        self._thread = None
