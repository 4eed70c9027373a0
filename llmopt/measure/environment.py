"""What machine and software a result came from: CPU, GPUs (every visible one), driver, CUDA, package versions,
the git commit and the exact command."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmopt.measure import nvml
from llmopt.measure.memory import torch_cuda

PACKAGES = (
    "llmopt", "torch", "transformers", "accelerate", "bitsandbytes", "tokenizers", "safetensors",
    "vllm", "flash-attn", "optimum", "gptqmodel", "rouge-score", "datasets", "nvidia-ml-py",
)  # fmt: skip


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
    """The visible GPUs: from torch where this process runs CUDA itself, else from NVML, whether torch is loaded or
    not (an engine in a process of its own, llama.cpp on a .gguf file without torch): never by initializing CUDA."""
    loaded = sys.modules.get("torch")
    if loaded is None or not loaded.cuda.is_initialized():
        described = _gpu_info_from_nvml()
        if described is not None:
            return {**described, "cuda": loaded.version.cuda if loaded is not None else None}
    torch = torch_cuda()
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


def _gpu_info_from_nvml() -> dict[str, Any] | None:
    """The visible GPUs as NVML describes them (CUDA_VISIBLE_DEVICES order, a MIG instance where CUDA sees one), or
    None where NVML cannot tell or shows none."""
    try:
        import pynvml

        handles = [d.handle for d in nvml.visible_devices()]
        if not handles:
            return None
        devices = [nvml.describe(h) for h in handles]
        driver = pynvml.nvmlSystemGetDriverVersion()
    except Exception:
        return None
    return {
        **{k: devices[0][k] for k in ("name", "memory_bytes", "capability")},
        "count": len(devices),
        "devices": [d["name"] for d in devices],
        "uuids": [d["uuid"] for d in devices],
        "driver": driver.decode() if isinstance(driver, bytes) else driver,
    }


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
        "cpus_allowed": len(os.sched_getaffinity(0)),  # fewer in a parallel sweep's cell: its share of the cores
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "gpu": gpu_info(),
        # Which GPUs the run was given and how CUDA numbered them (a sweep sets PCI bus order, NVML's).
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cuda_device_order": os.environ.get("CUDA_DEVICE_ORDER"),
        "git_commit": _git_commit(),
        "packages": versions,
    }


def device_label(gpu: dict[str, Any] | None) -> str:
    """A short machine name for tables: the GPU, or the CPU with its core count."""
    if gpu:
        return gpu["name"]
    return f"{_cpu_name()} ({os.cpu_count()} cores)"
