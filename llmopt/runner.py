"""One strategy over documents: length-grouped batches, OOM back-off, records flushed per batch, the summary."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from llmopt import measure, summary
from llmopt.data import PROMPTS, Document
from llmopt.errors import UsageError
from llmopt.results import RunDir
from llmopt.scoring import score_pair
from llmopt.stopping import StopRequest
from llmopt.strategies.base import GenerationParams, Strategy

# A systematic error (wrong kernel, broken driver) fails every batch; stop instead of failing them all slowly.
MAX_CONSECUTIVE_FAILED_BATCHES = 3
# --batch-size auto: the largest size tried, and the probes spent narrowing the gap after the first OOM.
MAX_AUTO_BATCH = 256
AUTO_BATCH_REFINE_PROBES = 3


@dataclass
class RunConfig:
    strategy: str
    model: str
    dataset: str
    prompt: str = "published-hf"
    batch_size: int | str = 1  # or "auto": the largest batch that fits, found before the timed loop
    max_new_tokens: int = 300
    sampling: str = "greedy"  # or "published": the study's library defaults
    seed: int | None = None
    ignore_eos: bool = False
    limit: int | None = None
    warmup: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # dtype, bnb_4bit_type, trust_remote_code

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the original; --limit may grow."""
        data = asdict(self)
        del data["limit"], data["warmup"]
        return data


@dataclass
class Item:
    index: int
    doc: Document
    prompt: str | list[int]
    prompt_tokens: int = 0


class Run:
    def __init__(
        self,
        config: RunConfig,
        strategy_cls: type[Strategy],
        docs: Sequence[Document],
        out: RunDir,
        stop: StopRequest | None = None,
    ) -> None:
        self.config = config
        self.strategy_cls = strategy_cls
        self.docs = list(docs[: config.limit] if config.limit else docs)
        self.out = out
        self.stop = stop or StopRequest()
        self.strategy: Strategy | None = None
        self.memory = measure.DeviceMemory()
        self.session: dict[str, Any] = {
            "event": "session", "download_s": None, "load_s": None, "warmup_s": None, "run_s": 0.0,
        }  # fmt: skip
        self.failed_batches_in_a_row = 0
        self.aborted = False
        self.batch_size = config.batch_size if isinstance(config.batch_size, int) else 1
        # Random weights and text-less workloads produce no summary worth scoring.
        self.scored = config.options.get("weights", "pretrained") != "random" and not config.dataset.startswith("workload:")

    def params(self) -> GenerationParams:
        temperature, top_p = (0.0, 1.0)
        if self.config.sampling == "published":
            temperature, top_p = self.strategy_cls.published_sampling
        return GenerationParams(
            max_new_tokens=self.config.max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=self.config.seed,
            ignore_eos=self.config.ignore_eos,
        )

    # --- the run ---------------------------------------------------------------------------------
    def execute(
        self, on_progress: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Process every unfinished document; always leaves a valid summary, also on Ctrl-C or a crash."""
        progress = on_progress or (lambda n: None)
        interrupted = False
        try:
            finished = {doc_id for doc_id, r in self.out.records().items() if r["status"] != "failed"}
            todo = [Item(i, d, "") for i, d in enumerate(self.docs) if d.id not in finished]
            if todo and self._load(todo, progress):
                if on_start:
                    on_start(len(todo))
                runnable = self._prepare(todo, progress)
                if self.config.batch_size == "auto" and not self.strategy_cls.engine_batching and runnable:
                    self.batch_size = self._find_batch_size(runnable)
                batches = self._batches(runnable)
                self._warm_up(batches)
                self._loop(batches, progress)
        except KeyboardInterrupt:
            interrupted = True
        except UsageError:
            raise
        except Exception as exc:  # a crash becomes a `failed` run with its error; the traceback goes to a file
            self.session["error"] = f"{type(exc).__name__}: {exc}"
            self.aborted = True
            (self.out.path / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
        finally:
            with self.stop.shielded():
                self._finish(interrupted or self.stop.requested)
        return self.summary()

    def _loop(self, batches: list[list[Item]], progress: Callable[[int], None]) -> None:
        """The timed document loop: memory peaks and the clock cover exactly this."""
        assert self.strategy is not None
        self.memory.start(self.strategy.memory_scope())
        started = time.perf_counter()
        try:
            for batch in batches:
                self._process(batch, progress)
                if self.aborted:
                    break
                if self.stop.requested:  # an interrupt that something inside the batch swallowed
                    raise KeyboardInterrupt
        finally:
            self.session["run_s"] = time.perf_counter() - started
            self.memory.stop()

    def _load(self, todo: list[Item], progress: Callable[[int], None]) -> bool:
        """Download (timed apart), then load. A model that does not fit at load time makes every document `oom`."""
        self.strategy = self.strategy_cls(self.config.model, **self.config.options)
        self.session["download_s"] = self.strategy.fetch()  # None: nothing to download (a local folder, no model)
        started = time.perf_counter()
        error: str | None = None
        try:
            self.strategy.load()
            self.strategy.synchronize()
        except Exception as exc:
            if not measure.is_out_of_memory(exc):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            error = f"{type(exc).__name__} while loading the model" + (f": {first[:300]}" if first else "")
        self.session["load_s"] = time.perf_counter() - started
        if error is None:
            return True
        # Out of the except block: its traceback holds the half-loaded model. Free it before writing anything.
        measure.free_device_memory()
        with self.stop.shielded():
            self.out.append_event({"event": "oom", "stage": "load", "batch_size": None,
                                   "doc_ids": [it.doc.id for it in todo], "generate_s": 0.0, "error": error})  # fmt: skip
            self.out.append_records([self._record(it, "oom", reason=error) for it in todo])
        progress(len(todo))
        return False

    def _prepare(self, todo: list[Item], progress: Callable[[int], None]) -> list[Item]:
        """Build prompts and count tokens; record empty and over-long documents as skipped."""
        assert self.strategy is not None
        skipped, runnable = [], []
        for item in todo:
            if item.doc.prompt_tokens is None and not item.doc.document.strip():
                skipped.append(self._record(item, "skipped", reason="empty document"))
            else:
                runnable.append(item)
        if self.strategy_cls.uses_prompt:
            texts = [PROMPTS[self.config.prompt](it.doc.document) for it in runnable]
            if self.config.prompt == "chat":
                texts = self.strategy.apply_chat_template(texts)
        else:
            texts = [it.doc.document for it in runnable]
        prompts: list[str | list[int]] = list(texts)
        for i, item in enumerate(runnable):
            if item.doc.prompt_tokens is not None:  # a workload: lengths only, the token ids are drawn
                prompts[i] = self.strategy.random_prompt(item.doc.prompt_tokens, seed=item.index)
        for item, prompt, n in zip(runnable, prompts, self.strategy.count_tokens(prompts), strict=True):
            item.prompt, item.prompt_tokens = prompt, n
        keep = []
        for item in runnable:
            reason = self.strategy.skip_reason(item.prompt_tokens, self.config.max_new_tokens)
            if reason:
                skipped.append(self._record(item, "skipped", reason=reason, prompt_tokens=item.prompt_tokens))
            else:
                keep.append(item)
        self._append(skipped)
        progress(len(skipped))
        return keep

    def _warm_up(self, batches: list[list[Item]]) -> None:
        if not (self.config.warmup and batches):
            return
        assert self.strategy is not None
        timer = measure.SyncedTimer(self.strategy.synchronize)
        ran_out = False
        try:
            with timer:
                self.strategy.warm_up([[it.prompt for it in b] for b in batches], self.params())
        except Exception as exc:
            if not measure.is_out_of_memory(exc):
                raise
            ran_out = True
        if ran_out:  # outside the except block, whose traceback holds the failed call's tensors
            measure.free_device_memory()
        self.session["warmup_s"] = timer.seconds

    def _fits(self, items: list[Item]) -> tuple[bool, float]:
        """Whether a batch of these prompts generates the full output without running out of memory."""
        assert self.strategy is not None
        params = GenerationParams(max_new_tokens=self.config.max_new_tokens, ignore_eos=True)  # memory peaks at the end
        timer = measure.SyncedTimer(self.strategy.synchronize)
        ran_out = False
        try:
            with timer:
                self.strategy.generate_batch([it.prompt for it in items], params)
        except Exception as exc:
            if not measure.is_out_of_memory(exc):
                raise
            ran_out = True
        if ran_out:
            measure.free_device_memory()
        return not ran_out, timer.seconds or 0.0

    def _find_batch_size(self, runnable: list[Item]) -> int:
        """--batch-size auto: double from 1 on the longest prompts (the heaviest batch of the run) until one runs out
        of memory or all documents fit, narrow the gap by bisection, keep the largest size that completed."""
        ordered = sorted(runnable, key=lambda it: (-it.prompt_tokens, it.index))
        ceiling = min(len(ordered), MAX_AUTO_BATCH)
        tried: list[dict[str, Any]] = []

        def probe(size: int) -> bool:
            ok, seconds = self._fits(ordered[:size])
            tried.append({"batch_size": size, "fits": ok, "seconds": seconds})
            return ok

        good, bad, size = 0, None, 1
        started = time.perf_counter()
        while size <= ceiling:
            if not probe(size):
                bad = size
                break
            good = size
            if size == ceiling:
                break
            size = min(size * 2, ceiling)
        for _ in range(AUTO_BATCH_REFINE_PROBES):
            if bad is None or bad - good <= max(1, good // 8):
                break
            mid = (good + bad) // 2
            if probe(mid):
                good = mid
            else:
                bad = mid
        chosen = max(good, 1)
        self.out.append_event({"event": "auto_batch", "tried": tried, "chosen": chosen})
        self.session.update(auto_batch_s=time.perf_counter() - started, batch_size=chosen)
        return chosen

    def _batches(self, runnable: list[Item]) -> list[list[Item]]:
        # Longest first: similar lengths share a batch (little padding) and an OOM shows up at once.
        ordered = sorted(runnable, key=lambda it: (-it.prompt_tokens, it.index))
        size = len(ordered) if self.strategy_cls.engine_batching else self.batch_size
        return [ordered[i : i + size] for i in range(0, len(ordered), size)]

    def _process(self, batch: list[Item], progress: Callable[[int], None]) -> None:
        assert self.strategy is not None
        timer = measure.SyncedTimer(self.strategy.synchronize)
        out_of_memory: str | None = None
        try:
            with timer:
                generations = self.strategy.generate_batch([it.prompt for it in batch], self.params())
            if len(generations) != len(batch):
                raise RuntimeError(f"strategy returned {len(generations)} results for {len(batch)} prompts")
        except Exception as exc:
            if not measure.is_out_of_memory(exc):
                self._on_failure(batch, exc, progress)
                return
            out_of_memory = type(exc).__name__
        if out_of_memory is not None:
            # Retried here, after the except block: while it ran, the exception's traceback kept the failed call's
            # frames (its KV cache, its logits) alive, and every retry would have run out of memory too.
            self._on_oom(batch, timer.seconds or 0.0, out_of_memory, progress)
            return
        self.failed_batches_in_a_row = 0
        share = timer.seconds / len(batch)
        records = []
        for item, gen in zip(batch, generations, strict=True):
            records.append(
                self._record(
                    item,
                    "ok",
                    prediction=gen.text,
                    prompt_tokens=gen.prompt_tokens,
                    output_tokens=gen.output_tokens,
                    finish_reason=gen.finish_reason,
                    batch_size=len(batch),
                    generate_s=share,
                    ttft_s=gen.ttft_s,
                    latency_s=gen.latency_s,
                    **(score_pair(gen.text, item.doc.summary) if self.scored else {}),
                )
            )
        self._append(records)
        progress(len(batch))

    def _on_failure(self, batch: list[Item], exc: Exception, progress: Callable[[int], None]) -> None:
        self.failed_batches_in_a_row += 1
        self.aborted = self.failed_batches_in_a_row >= MAX_CONSECUTIVE_FAILED_BATCHES
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        self._append([self._record(it, "failed", reason=reason, batch_size=len(batch)) for it in batch])
        progress(len(batch))

    def _on_oom(self, batch: list[Item], seconds: float, error: str, progress: Callable[[int], None]) -> None:
        """Record the event, free the device, then retry at half the size; a document that fails alone is `oom`."""
        with self.stop.shielded():
            self.out.append_event(
                {"event": "oom", "batch_size": len(batch), "doc_ids": [it.doc.id for it in batch], "generate_s": seconds,
                 "error": error}
            )  # fmt: skip
        measure.free_device_memory()
        if len(batch) == 1:
            self._append([self._record(batch[0], "oom", reason=error, batch_size=1)])
            progress(1)
            return
        half = (len(batch) + 1) // 2
        for part in (batch[:half], batch[half:]):
            self._process(part, progress)

    def _append(self, records: list[dict[str, Any]]) -> None:
        with self.stop.shielded():  # a record is written whole or not at all
            self.out.append_records(records)

    def _record(self, item: Item, status: str, **fields: Any) -> dict[str, Any]:
        return {"index": item.index, "id": item.doc.id, "status": status, "reference": item.doc.summary, **fields}

    def _finish(self, interrupted: bool) -> None:
        if self.strategy is not None:
            self.session["describe"] = self.strategy.describe()
            try:
                self.strategy.close()
            except Exception as exc:  # a failing close must not lose the results
                print(f"llmopt: warning: closing the strategy failed: {exc}", file=sys.stderr)
        self.session.update(self.memory.peaks())
        self.session.update(peak_rss_bytes=measure.peak_rss_bytes(), interrupted=interrupted, aborted=self.aborted)
        damaged = self.out.damaged_lines()
        if damaged:  # cut off by a hard kill in an earlier session; their documents were run again
            self.session["damaged_record_lines"] = damaged
        self.out.append_event(self.session)
        self.out.sort_records()
        self.out.write_summary(self.summary())

    def summary(self) -> dict[str, Any]:
        ids = {d.id for d in self.docs}
        records = [r for r in self.out.records().values() if r["id"] in ids]
        device = measure.device_label(measure.gpu_info())
        return summary.build(self.config.identity(), len(self.docs), records, self.out.events(), device)
