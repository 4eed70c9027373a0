"""Is there a CUDA GPU for this process, and of what compute capability: asked without initializing CUDA here.

Asking CUDA itself (`torch.cuda.is_available()`, `device_count()`) initializes the CUDA driver in this process and
poisons `fork`: a child forked after it cannot use CUDA. `torch.cuda.is_initialized()` stays False, so vLLM, which
forks its engine core unless CUDA is initialized, keeps `fork` and its engine fails its CUDA init (vLLM PR #15951).
NVML answers the same questions without touching CUDA. `PYTORCH_NVML_BASED_CUDA_CHECK=1` makes torch's own
`is_available()` ask NVML too, for the calls libraries make later in this process. Where NVML cannot answer, CUDA is
asked, and vLLM is told to spawn its processes instead of forking them.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from llmopt.measure import nvml

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
VLLM_START_METHOD = "VLLM_WORKER_MULTIPROC_METHOD"


@dataclass(frozen=True)
class CudaCheck:
    available: bool
    capability: tuple[int, int] | None  # the first visible device's, where one is available
    via: str  # how it was found out: "no torch", "torch without CUDA", "NVML", "CUDA (...)"


def check() -> CudaCheck:
    """Whether this process could run on a CUDA GPU, found without initializing CUDA where NVML can tell."""
    os.environ.setdefault(NVML_CHECK, "1")
    if importlib.util.find_spec("torch") is None:
        return CudaCheck(False, None, "no torch")
    import torch

    if not torch.backends.cuda.is_built():
        return CudaCheck(False, None, "torch without CUDA")
    if torch.cuda.is_initialized():  # CUDA is already up in this process (vLLM spawns then): nothing left to spare
        if torch.cuda.device_count() == 0:
            return CudaCheck(False, None, "CUDA (already initialized here)")
        return CudaCheck(True, tuple(torch.cuda.get_device_capability(0)), "CUDA (already initialized here)")
    try:
        devices = nvml.visible_devices()
    except Exception as exc:  # NVML missing or refusing: only CUDA can tell, and asking it poisons fork
        why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ImportError) else "NVML not installed"
        found = torch.cuda.is_available()
        if not found:
            return CudaCheck(False, None, f"CUDA (NVML could not tell: {why})")
        os.environ.setdefault(VLLM_START_METHOD, "spawn")  # a forked engine could not use CUDA after this
        return CudaCheck(True, tuple(torch.cuda.get_device_capability(0)), f"CUDA (NVML could not tell: {why})")
    if not devices:
        return CudaCheck(False, None, "NVML")
    try:
        found = nvml.capability(devices[0].handle)
    except Exception:  # a driver that will not say: the device is there all the same
        found = None
    return CudaCheck(True, found, "NVML")
