"""The GPUs of this machine a parallel sweep hands out (`--gpus all|0,1,...`), read through NVML so that the sweep
itself never creates a CUDA context, and whether this machine's GPU is the type a cell of the experiment asks for."""

from __future__ import annotations

import os
import re

from llmopt.errors import UsageError


def _nvml_names() -> list[str] | None:
    """Names of the whole GPUs NVML sees, in its order; None where NVML is missing or refuses (no driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        names = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return names
    except Exception:  # ImportError, NVMLError without a driver
        return None


def local_gpus(spec: str) -> list[str]:
    """The GPUs `--gpus` names, as CUDA_VISIBLE_DEVICES entries for the cells. Where the sweep itself runs with
    CUDA_VISIBLE_DEVICES set, ids count within it (`--gpus 0` is its first entry) and `all` is all of it; otherwise
    ids are NVML's (nvidia-smi's) and `all` is every GPU NVML sees. Without NVML, ids are taken as written."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [e.strip() for e in inherited.split(",") if e.strip()] if inherited is not None else None
    names = _nvml_names()
    if spec == "all":
        ids = visible if visible is not None else [str(i) for i in range(len(names or []))]
        if not ids:
            raise UsageError("--gpus all: no GPU here (NVML finds none); use --parallel N to run cells side by side")
        return ids
    ids = [e.strip() for e in spec.split(",")]
    if not ids or any(not e for e in ids):
        raise UsageError(f"--gpus takes 'all' or GPU ids separated by commas, such as 0,1; got {spec!r}")
    if len(set(ids)) < len(ids):
        raise UsageError(f"--gpus names a GPU twice: {spec!r}")
    count = len(visible) if visible is not None else len(names) if names is not None else None
    if count is not None:
        missing = [e for e in ids if not e.isdigit() or int(e) >= count]
        if missing:
            where = f"CUDA_VISIBLE_DEVICES={inherited}" if visible is not None else f"NVML sees {count}"
            raise UsageError(f"--gpus {spec}: there is no GPU {missing[0]} ({where})")
    return [visible[int(e)] for e in ids] if visible is not None else ids


def device_name(gpu_id: str | None = None) -> str | None:
    """The name NVML gives a GPU of this machine (the first visible one by default), or None without a GPU."""
    names = _nvml_names()
    if not names:
        return None
    first = gpu_id or (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    return names[int(first)] if first.isdigit() and int(first) < len(names) else names[0]


ADVICE = "; run the sweep with --executor ray"  # where a machine lacks a type: a cluster that has it


def type_mismatch(hardware_type: str, name: str | None, advice: str = ADVICE) -> str | None:
    """Why a GPU named `name` is not of the experiment's `hardware_type`, or None where it is. A type matches our
    GPU table's name for the device (H100-SXM) or a word of the device's own name (H100, L4, A10G)."""
    if name is None:
        return f"the cell is for a {hardware_type} and this machine has no GPU{advice}"
    from llmopt.measure.roofline import gpu_for_device

    spec = gpu_for_device(name)
    if (spec is not None and spec.name.lower() == hardware_type.lower()) or re.search(
        rf"(?<![A-Za-z0-9]){re.escape(hardware_type)}(?![A-Za-z0-9])", name, re.IGNORECASE
    ):
        return None
    return f"the cell is for a {hardware_type} and this machine's GPU is a {name}{advice}"
