"""Strategies that fail the way real ones do, loaded through `--strategy tests/fault_strategies.py:Class`.

They produce lead-style summaries so the run completes fast; what they test is the runner around them.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmopt.strategies.base import Generation, GenerationParams
from llmopt.strategies.baseline import LeadStrategy

MAX_FITTING_BATCH = 2
ALWAYS_OOM = "OOM-ALWAYS"  # a document so long that it never fits, even alone


class CudaOomAboveTwo(LeadStrategy):
    """Raises torch's real CUDA OutOfMemoryError for batches over two documents and for the marked document."""

    name = "cuda-oom-above-two"

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        import torch

        if len(prompts) > MAX_FITTING_BATCH or any(ALWAYS_OOM in p for p in prompts):
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (batch of {len(prompts)})")
        return super().generate_batch(prompts, params)


class CpuOomAboveTwo(LeadStrategy):
    """Makes the CPU allocator itself fail (a 32 TiB tensor) for batches over two documents."""

    name = "cpu-oom-above-two"

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        import torch

        if len(prompts) > MAX_FITTING_BATCH:
            torch.empty(1 << 45, dtype=torch.uint8)
        return super().generate_batch(prompts, params)


class Broken(LeadStrategy):
    """Fails every batch with an ordinary error: the run must stop and say why, not hang or crash."""

    name = "broken"

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        raise ValueError("kernel exploded")


class SwallowsInterrupt(LeadStrategy):
    """Catches KeyboardInterrupt inside a batch, as some libraries do; Ctrl-C must still stop the run."""

    name = "swallows-interrupt"

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        import contextlib
        import time

        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(0.3)
        return super().generate_batch(prompts, params)


class KvCacheUnderBudget(LeadStrategy):
    """Allocates the way a CUDA generate call does, against a fixed budget of live bytes, with real tensors.

    A call first allocates its prompts' KV cache (one unit per document), then needs as much again while decoding;
    if the bytes still alive plus that need exceed the budget, it raises torch's CUDA OutOfMemoryError with the
    prefill tensors still held by its frame, as CUDA would. Whatever keeps that frame alive (an exception's
    traceback) keeps those bytes allocated, and the retry runs out of memory too.
    """

    name = "kv-cache-under-budget"
    UNIT = 1 << 20  # bytes per document and phase
    BUDGET = 5 * UNIT  # a batch of 2 fits (4 units), a batch of 4 does not (8)

    def __init__(self, model: str, **options: object) -> None:
        super().__init__(model, **options)
        self._live: list = []

    def _live_bytes(self) -> int:
        self._live = [ref for ref in self._live if ref() is not None]
        return sum(ref().nbytes for ref in self._live)

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        import weakref

        import torch

        prefill = torch.ones(len(prompts) * self.UNIT, dtype=torch.uint8)  # touched, so really resident
        self._live.append(weakref.ref(prefill))
        if self._live_bytes() + len(prompts) * self.UNIT > self.BUDGET:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {self._live_bytes()} bytes held (batch of {len(prompts)})")
        return super().generate_batch(prompts, params)


class OomAtLoad(LeadStrategy):
    """The model does not fit at all: loading raises torch's CUDA OutOfMemoryError (the study's fp32 default on a T4)."""

    name = "oom-at-load"

    def load(self) -> None:
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 26.00 GiB")


class FailsMarkedDocuments(LeadStrategy):
    """An ordinary error for any batch holding a document marked FAIL-ME; the others complete."""

    name = "fails-marked-documents"

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        if any("FAIL-ME" in p for p in prompts):
            raise ValueError("cannot summarize this one")
        return super().generate_batch(prompts, params)


class SpawnsWorkerAndHangs(LeadStrategy):
    """Like an engine with worker processes: load starts a child that ignores SIGTERM (its pid goes to the file named
    by LLMOPT_TEST_PIDFILE), then generation never returns. A sweep's timeout must stop the child too."""

    name = "spawns-worker-and-hangs"

    def load(self) -> None:
        import os
        import subprocess
        import sys

        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        child = subprocess.Popen([sys.executable, "-c", code])
        with open(os.environ["LLMOPT_TEST_PIDFILE"], "w") as f:
            f.write(str(child.pid))

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        import time

        time.sleep(600)
        return super().generate_batch(prompts, params)


class Hangs(LeadStrategy):
    """Loads, then never returns from generation: only a signal ends it."""

    name = "hangs"

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        import time

        time.sleep(600)
        return super().generate_batch(prompts, params)


class SlowToClose(LeadStrategy):
    """An engine whose shutdown takes long (tensor-parallel workers): the summary must not wait for it."""

    name = "slow-to-close"

    def close(self) -> None:
        import time

        time.sleep(600)


class Slow(LeadStrategy):
    """A quarter of a second per batch: a run long enough to time out part way."""

    name = "slow"

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        import time

        time.sleep(0.25)
        return super().generate_batch(prompts, params)


class FailsWhenRepeated(LeadStrategy):
    """Fails on any prompt it has generated before: the first pass completes, every `--repeats` pass fails."""

    name = "fails-when-repeated"

    def __init__(self, model: str, **options: object) -> None:
        super().__init__(model, **options)
        self.seen: set[str] = set()

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        if self.seen.intersection(prompts):
            raise RuntimeError("engine died on the second pass")
        self.seen.update(prompts)
        return super().generate_batch(prompts, params)
