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
