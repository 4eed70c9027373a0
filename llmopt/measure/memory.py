"""Peak memory of a run's document loop: torch's allocator where the model lives in this process, the GPUs' own
figures through NVML, and the process's resident memory; and what counts as running out of memory."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmopt.measure import nvml


def torch_cuda():
    """torch, only if some strategy already imported it and a CUDA device is there; never imports it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch
    return None


@dataclass(frozen=True)
class MemoryScope:
    """Where a strategy's model lives, so that the memory figures measure that and nothing else."""

    allocator: bool = True  # the model is in this process's torch allocator; False: an engine process of its own
    devices: int = 1  # visible CUDA devices the run uses (a tensor-parallel engine uses several)


class DeviceMemory:
    """Peak device memory over the document loop: torch's allocator (where the model lives in this process) and,
    through NVML, the memory used on every GPU the run uses, sampled in the background."""

    def __init__(self) -> None:
        self.scope = MemoryScope()
        self._sampler: nvml.Sampler | None = None
        self._note: str | None = None
        self._active = False
        self.handles: list[Any] = []  # NVML handles of the run's GPUs (the energy meter reads them too)

    def start(self, scope: MemoryScope) -> None:
        self.scope = scope
        torch = torch_cuda()
        if torch is None:
            return
        self._active = True
        if scope.allocator:
            # Memory freed after loading (random weights made in 16 bits, then quantized; bnb's staging copies) stays
            # in the allocator's cache and in NVML's figure until it is given back: give it back before peaks start.
            free_device_memory()
            torch.cuda.reset_peak_memory_stats()
            handles, self._note = nvml.handles_for(nvml.cuda_devices(torch, scope.devices))
        else:
            # The model lives in an engine process: touching torch.cuda here would create a CUDA context of this
            # process's own on the GPU (and count in NVML's figure). Find the devices from CUDA_VISIBLE_DEVICES.
            handles, self._note = nvml.handles_without_cuda(scope.devices)
        self.handles = handles
        if handles:
            self._sampler = nvml.Sampler(handles).start()

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()

    def peaks(self) -> dict[str, Any]:
        torch = torch_cuda()
        if torch is None or not self._active:
            return gpu_figures(None, None, None, self.scope)
        sampler = self._sampler
        mine = self.scope.allocator
        figures = gpu_figures(
            int(torch.cuda.max_memory_allocated()) if mine else None,
            int(torch.cuda.max_memory_reserved()) if mine else None,
            sampler.peak if sampler else None,
            self.scope,
        )
        figures["gpu_devices_sampled"] = len(sampler.devices) if sampler else 0
        figures["gpu_memory_note"] = (sampler.note if sampler else None) or self._note
        return figures


def gpu_figures(allocated: int | None, reserved: int | None, device_used: int | None, scope: MemoryScope) -> dict[str, Any]:
    """The summary's GPU memory figures. An engine in its own process allocates nothing through this process's
    allocator: its 0 would read as "no memory", so those figures are null and the device's (NVML) figure stands."""
    mine = scope.allocator
    return {
        "peak_gpu_mem_bytes": allocated if mine else None,
        "peak_gpu_reserved_bytes": reserved if mine else None,
        "peak_gpu_device_used_bytes": device_used,
    }


def free_device_memory() -> None:
    """Give cached blocks back after an out-of-memory error so the retry starts clean."""
    import gc

    gc.collect()
    torch = torch_cuda()
    if torch is not None:
        torch.cuda.empty_cache()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure to allocate."""
    if isinstance(exc, MemoryError):
        return True
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("DefaultCPUAllocator: can't allocate memory" in text or "out of memory" in text)


def unless_out_of_memory(work: Callable[[], object]) -> str | None:
    """Run `work`; None if it completed, else the out-of-memory error it raised ("OutOfMemoryError: ...").

    Other errors pass through. The device is freed after the except block has ended: inside it, the error's traceback
    still holds the failed call's frames (its KV cache, its logits), and freeing there would free nothing.
    """
    error: str | None = None
    try:
        work()
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__
    if error is not None:
        free_device_memory()
    return error
