"""Honest measurement: clocks read after the device is synchronized, peak memory, and what machine this was."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmopt import nvml

PACKAGES = (
    "llmopt", "torch", "transformers", "accelerate", "bitsandbytes", "tokenizers", "safetensors",
    "vllm", "flash-attn", "optimum", "gptqmodel", "rouge-score", "datasets", "nvidia-ml-py",
)  # fmt: skip


class SyncedTimer:
    """Wall-clock seconds around device work; `sync` is called before each clock read."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> SyncedTimer:
        self.sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.seconds = time.perf_counter() - self._start


def _torch_cuda():
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

    def start(self, scope: MemoryScope) -> None:
        self.scope = scope
        torch = _torch_cuda()
        if torch is None:
            return
        self._active = True
        # Memory freed after loading (random weights made in 16 bits, then quantized; bnb's staging copies) stays in
        # the allocator's cache and in NVML's figure until it is given back: give it back before the peaks start.
        free_device_memory()
        torch.cuda.reset_peak_memory_stats()
        handles, self._note = nvml.handles_for(nvml.cuda_devices(torch, scope.devices))
        if handles:
            self._sampler = nvml.Sampler(handles).start()

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()

    def peaks(self) -> dict[str, Any]:
        torch = _torch_cuda()
        if torch is None or not self._active:
            return gpu_figures(None, None, None, self.scope)
        sampler = self._sampler
        figures = gpu_figures(
            int(torch.cuda.max_memory_allocated()),
            int(torch.cuda.max_memory_reserved()),
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
    torch = _torch_cuda()
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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_info() -> dict[str, Any] | None:
    torch = _torch_cuda()
    if torch is None:
        return None
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "name": props.name,
        "memory_bytes": int(props.total_memory),
        "capability": f"{props.major}.{props.minor}",
        "count": torch.cuda.device_count(),
        # Every visible device (CUDA_VISIBLE_DEVICES order), so a tensor-parallel run names all its GPUs.
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "uuids": [d.uuid for d in nvml.cuda_devices(torch, torch.cuda.device_count())],
        "cuda": torch.version.cuda,
        "driver": None,
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
    except Exception:
        pass
    return info


def environment(argv: list[str], module: str = "llmopt.run") -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "command": shlex.join([sys.executable, "-m", module, *argv]),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "gpu": gpu_info(),
        "git_commit": _git_commit(),
        "packages": versions,
    }


def device_label(gpu: dict[str, Any] | None) -> str:
    """A short machine name for tables: the GPU, or the CPU with its core count."""
    if gpu:
        return gpu["name"]
    return f"{_cpu_name()} ({os.cpu_count()} cores)"
