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

    allocator: bool = True  # the model is in this process's torch allocator; False: an engine allocating on its own
    devices: int = 1  # visible CUDA devices the run uses (a tensor-parallel engine uses several); 0: none, a CPU engine


class DeviceMemory:
    """Peak device memory over the document loop: torch's allocator (where the model lives in this process) and,
    through NVML, the memory used on every GPU the run uses, sampled in the background, less what those GPUs held
    before the model was loaded (`read_idle`)."""

    def __init__(self) -> None:
        self.scope = MemoryScope()
        self._sampler: nvml.Sampler | None = None
        self._note: str | None = None
        self._active = False
        self._idle: dict[str, int] | None = None  # NVML's used bytes per device UUID before the load
        self._idle_bytes: int | None = None
        self.handles: list[Any] = []  # NVML handles of the run's GPUs (the energy meter reads them too)

    @property
    def on_gpu(self) -> bool:
        """Whether the run's model is on a CUDA GPU (known once `start` has run)."""
        return self._active

    @property
    def note(self) -> str | None:
        """Why the GPU figures are missing, where they are."""
        return (self._sampler.note if self._sampler else None) or self._note

    def read_idle(self) -> None:
        """Memory in use on every visible GPU before the model is loaded (the driver's own, other processes'), read
        through NVML alone so that no CUDA context of this process counts in it; subtracted from the device figure."""
        try:
            devices = nvml.visible_devices()
            self._idle = {d.uuid: nvml.memory_used(d.handle) for d in devices}
        except Exception:  # no NVML, no GPU: no device figure to subtract it from either
            self._idle = None

    def start(self, scope: MemoryScope) -> None:
        self.scope = scope
        if scope.allocator:
            torch = torch_cuda()
            if torch is None:
                return
            self._active = True
            # Memory freed after loading (random weights made in 16 bits, then quantized; bnb's staging copies) stays
            # in the allocator's cache and in NVML's figure until it is given back: give it back before peaks start.
            free_device_memory()
            torch.cuda.reset_peak_memory_stats()
            handles, self._note = nvml.handles_for(nvml.cuda_devices(torch, scope.devices))
        else:
            if scope.devices < 1:
                return
            # An engine allocating on its own (vLLM's engine process, llama.cpp): torch's allocator never sees it, and
            # torch may not even be loaded (a .gguf run). Touching torch.cuda here would create a CUDA context of this
            # process's own on the GPU (and count in NVML's figure): the devices come from CUDA_VISIBLE_DEVICES.
            self._active = True
            handles, self._note = nvml.handles_without_cuda(scope.devices)
        self.handles = handles
        if handles:
            if self._idle is not None:
                uuids = [nvml.uuid_of(h) for h in handles]
                if all(u in self._idle for u in uuids):
                    self._idle_bytes = sum(self._idle[u] for u in uuids if u is not None)
            self._sampler = nvml.Sampler(handles).start()

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()

    def peaks(self) -> dict[str, Any]:
        if not self._active:
            return {**gpu_figures(None, None, None, self.scope), **device_reserved(None, None)}
        sampler = self._sampler
        mine = self.scope.allocator
        torch = torch_cuda() if mine else None
        device_used = sampler.peak if sampler else None
        figures = gpu_figures(
            int(torch.cuda.max_memory_allocated()) if torch is not None else None,
            int(torch.cuda.max_memory_reserved()) if torch is not None else None,
            device_used,
            self.scope,
        )
        figures.update(device_reserved(device_used, self._idle_bytes))
        figures["gpu_devices_sampled"] = len(sampler.devices) if sampler else 0
        figures["gpu_memory_note"] = self.note
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


def device_reserved(device_used: int | None, idle: int | None) -> dict[str, Any]:
    """The device's (NVML) figure is what the run's GPUs held, used or not (vLLM reserves its share of the card up
    front); less what they held before the load (the driver's own, other processes'), it is what the run reserved."""
    reserved = max(0, device_used - idle) if device_used is not None and idle is not None else None
    return {"gpu_device_idle_bytes": idle, "peak_gpu_device_reserved_bytes": reserved}


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
