"""How documents are batched, what happens when a batch runs out of memory, and how `--batch-size auto` is found.

Documents go longest first, so similar lengths share a batch (little padding) and a batch that will not fit fails at
once. A batch that runs out of memory is recorded and retried in halves down to single documents; a document that
fails alone is `oom`. Every retry runs after the failed call's memory is freed: the error's traceback holds that
call's frames (its KV cache, its logits), so the retry waits until the error handler has let it go.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmopt.measure import memory
from llmopt.measure.timing import SyncedTimer
from llmopt.quality.rouge import score_pair
from llmopt.runner.records import Item, Recorder
from llmopt.strategies.base import GenerationParams, Strategy

# A systematic error (wrong kernel, broken driver) fails every batch; stop instead of failing them all slowly.
MAX_CONSECUTIVE_FAILED_BATCHES = 3
# --batch-size auto: the largest size tried, and the probes spent narrowing the gap after the first OOM.
MAX_AUTO_BATCH = 256
AUTO_BATCH_REFINE_PROBES = 3


def longest_first(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda it: (-it.prompt_tokens, it.index))


def split(items: list[Item], size: int) -> list[list[Item]]:
    ordered = longest_first(items)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


class Batcher:
    """Runs batches through a strategy: records what completed, backs off on out-of-memory errors, and gives up
    after MAX_CONSECUTIVE_FAILED_BATCHES ordinary failures in a row (`aborted`)."""

    def __init__(self, strategy: Strategy, params: GenerationParams, recorder: Recorder, scored: bool) -> None:
        self.strategy = strategy
        self.params = params
        self.recorder = recorder
        self.scored = scored  # random weights and text-less workloads produce nothing worth scoring
        self.failed_in_a_row = 0
        self.aborted = False
        self.completed: list[tuple[list[Item], int]] = []  # batches as they completed, with their output tokens
        self.docs_generated = 0  # across every pass: what the energy figures are divided by
        self.tokens_generated = 0

    def run(self, batch: list[Item], progress: Callable[[int], None]) -> None:
        timer = SyncedTimer(self.strategy.synchronize)
        out_of_memory: str | None = None
        try:
            with timer:
                generations = self.strategy.generate_batch([it.prompt for it in batch], self.params)
            if len(generations) != len(batch):
                raise RuntimeError(f"strategy returned {len(generations)} results for {len(batch)} prompts")
        except Exception as exc:
            if not memory.is_out_of_memory(exc):
                self._failed(batch, exc, progress)
                return
            out_of_memory = type(exc).__name__
        if out_of_memory is not None:
            # Retried here, after the except block: while it ran, the exception's traceback kept the failed call's
            # frames (its KV cache, its logits) alive, and every retry would have run out of memory too.
            self._out_of_memory(batch, timer.seconds or 0.0, out_of_memory, progress)
            return
        self.failed_in_a_row = 0
        tokens = sum(g.output_tokens for g in generations)
        self.completed.append((batch, tokens))
        self.docs_generated += len(batch)
        self.tokens_generated += tokens
        share = timer.seconds / len(batch)
        records = [
            Recorder.record(
                item, "ok", prediction=gen.text, prompt_tokens=gen.prompt_tokens, output_tokens=gen.output_tokens,
                finish_reason=gen.finish_reason, batch_size=len(batch), generate_s=share, ttft_s=gen.ttft_s,
                latency_s=gen.latency_s, **(score_pair(gen.text, item.doc.summary) if self.scored else {}),
            )
            for item, gen in zip(batch, generations, strict=True)
        ]  # fmt: skip
        self.recorder.append(records)
        progress(len(batch))

    def _failed(self, batch: list[Item], exc: Exception, progress: Callable[[int], None]) -> None:
        self.failed_in_a_row += 1
        self.aborted = self.failed_in_a_row >= MAX_CONSECUTIVE_FAILED_BATCHES
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {first}"
        self.recorder.append([Recorder.record(it, "failed", reason=reason, batch_size=len(batch)) for it in batch])
        progress(len(batch))

    def _out_of_memory(self, batch: list[Item], seconds: float, error: str, progress: Callable[[int], None]) -> None:
        """Record the event, free the device, then retry at half the size; a document that fails alone is `oom`."""
        self.recorder.event(
            {"event": "oom", "batch_size": len(batch), "doc_ids": [it.doc.id for it in batch], "generate_s": seconds,
             "error": error}
        )  # fmt: skip
        memory.free_device_memory()
        if len(batch) == 1:
            self.recorder.append([Recorder.record(batch[0], "oom", reason=error, batch_size=1)])
            progress(1)
            return
        half = (len(batch) + 1) // 2
        for part in (batch[:half], batch[half:]):
            self.recorder.honour_stop()
            self.run(part, progress)

    def repeat(self) -> tuple[float, int]:
        """Generate every batch that completed in the first pass again, timed, records untouched: the seconds and
        the documents of this pass. A batch that runs out of memory now is left out of it (its time counts)."""
        seconds, docs = 0.0, 0
        self.strategy.drop_prompt_cache()  # the same prompts again: no pass may be served from the one before
        for batch, tokens in self.completed:
            timer = SyncedTimer(self.strategy.synchronize)

            def generate(batch: list[Item] = batch, timer: SyncedTimer = timer) -> None:
                with timer:
                    self.strategy.generate_batch([it.prompt for it in batch], self.params)

            if memory.unless_out_of_memory(generate) is None:
                docs += len(batch)
                self.docs_generated += len(batch)
                self.tokens_generated += tokens  # the same documents, the same greedy outputs
            seconds += timer.seconds or 0.0
            self.recorder.honour_stop()
        return seconds, docs

    def fits(self, items: list[Item], max_new_tokens: int) -> tuple[bool, float]:
        """Whether a batch of these prompts generates the full output without running out of memory."""
        params = GenerationParams(max_new_tokens=max_new_tokens, ignore_eos=True)  # memory peaks at the end
        timer = SyncedTimer(self.strategy.synchronize)

        def generate() -> None:
            with timer:
                self.strategy.generate_batch([it.prompt for it in items], params)

        return memory.unless_out_of_memory(generate) is None, timer.seconds or 0.0


def find_batch_size(items: list[Item], fits: Callable[[list[Item]], tuple[bool, float]]) -> tuple[int, list[dict[str, Any]]]:
    """--batch-size auto: double from 1 on the longest prompts (the heaviest batch of the run) until one runs out of
    memory or all documents fit, narrow the gap by bisection, keep the largest size that completed. Returns the size
    and every try."""
    ordered = longest_first(items)
    ceiling = min(len(ordered), MAX_AUTO_BATCH)
    tried: list[dict[str, Any]] = []

    def probe(size: int) -> bool:
        ok, seconds = fits(ordered[:size])
        tried.append({"batch_size": size, "fits": ok, "seconds": seconds})
        return ok

    good, bad, size = 0, None, 1
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
    return max(good, 1), tried
