"""Strategy registry: names map to "module:Class" strings, imported only when asked for.

Strategy modules import their heavy libraries inside methods, so resolving a class to read its
description or requirements stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from llmopt.errors import StrategyUnavailable, UsageError
from llmopt.strategies.base import Strategy

REGISTRY: dict[str, str] = {
    "default": "llmopt.strategies.hf:DefaultStrategy",
    "sdpa": "llmopt.strategies.hf:SdpaStrategy",
    "compile": "llmopt.strategies.hf:CompiledStrategy",
    "flash-attn": "llmopt.strategies.hf:FlashAttentionStrategy",
    "8bit": "llmopt.strategies.hf:Int8Strategy",
    "4bit": "llmopt.strategies.hf:FourBitStrategy",
    "gptq": "llmopt.strategies.hf:GptqStrategy",
    "vllm": "llmopt.strategies.vllm:VllmStrategy",
    "vllm-awq": "llmopt.strategies.vllm:VllmAwqStrategy",
    "vllm-gptq": "llmopt.strategies.vllm:VllmGptqStrategy",
    "vllm-fp8": "llmopt.strategies.vllm:VllmFp8Strategy",
    "vllm-ngram": "llmopt.strategies.vllm:VllmNgramStrategy",
    "llamacpp": "llmopt.strategies.llamacpp:LlamaCppStrategy",
    "torchao-int8": "llmopt.strategies.torchao:TorchAoInt8Strategy",
    "torchao-int4": "llmopt.strategies.torchao:TorchAoInt4Strategy",
    "torchao-fp8": "llmopt.strategies.torchao:TorchAoFp8Strategy",
    "prompt-lookup": "llmopt.strategies.speculative:PromptLookupStrategy",
    "lead": "llmopt.strategies.baseline:LeadStrategy",
}


@dataclass(frozen=True)
class Availability:
    ready: bool
    reason: str = ""  # what is missing and how to get it, when not ready


def _import_target(target: str) -> type[Strategy]:
    module_part, _, class_name = target.rpartition(":")
    if not module_part or not class_name:
        raise UsageError(f"strategy {target!r} must look like NAME, path/to/file.py:Class or package.module:Class")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part).expanduser()
        if not path.is_file():
            raise UsageError(f"strategy file {str(path)!r} does not exist")
        module_name = f"llmopt_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot import strategy file {str(path)!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: report, do not crash
            raise UsageError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise UsageError(f"cannot import module {module_part!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UsageError(f"{module_part!r} has no class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise UsageError(f"{target!r} is not a subclass of llmopt.strategies.base.Strategy")
    return cls


def resolve(name: str) -> type[Strategy]:
    """The class for a registered name or a user's `file.py:Class` / `module:Class`."""
    if name in REGISTRY:
        return _import_target(REGISTRY[name])
    if ":" in name:
        cls = _import_target(name)
        if not cls.name:
            cls.name = name.rpartition(":")[2]
        return cls
    close = difflib.get_close_matches(name, REGISTRY, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(REGISTRY)}"
    raise UsageError(f"unknown strategy {name!r}{hint}")


def cuda_capability() -> tuple[int, int] | None:
    """The first CUDA device's compute capability, or None without torch or a CUDA GPU. Read through NVML: asking
    CUDA here would leave a process that later forks an engine (vLLM) unable to use CUDA in it."""
    from llmopt.measure import cuda

    found = cuda.check()
    return found.capability if found.available else None


def availability(cls: type[Strategy]) -> Availability:
    reasons = []
    missing = [req for req in cls.requires if importlib.util.find_spec(req.module) is None]
    if missing:
        pip = " ".join(dict.fromkeys(req.pip for req in missing))
        reasons.append(f"missing {', '.join(req.module for req in missing)}: pip install {pip}")
    if cls.needs_cuda:
        want = f" of compute capability {'.'.join(map(str, cls.min_cuda_capability))} or newer" if cls.min_cuda_capability else ""
        capability = cuda_capability()
        if capability is None:
            reasons.append(f"needs a CUDA GPU{want}; this machine has none")
        elif cls.min_cuda_capability and capability < cls.min_cuda_capability:
            reasons.append(f"needs a CUDA GPU{want}; this one is {'.'.join(map(str, capability))}")
    if not missing and (problem := cls.hardware_problem()):
        reasons.append(problem)
    return Availability(not reasons, "; ".join(reasons))


def require_available(cls: type[Strategy]) -> None:
    status = availability(cls)
    if not status.ready:
        raise StrategyUnavailable(f"strategy {cls.name!r} cannot run here: {status.reason}")


def list_lines() -> list[str]:
    """One line per registered strategy: name, what it does, whether it can run here."""
    width = max(map(len, REGISTRY))
    lines = []
    for name in REGISTRY:
        cls = resolve(name)
        status = availability(cls)
        state = "ready" if status.ready else status.reason
        lines.append(f"{name:<{width}}  {cls.description}  [{state}]")
    return lines
