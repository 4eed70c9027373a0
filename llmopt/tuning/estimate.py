"""The tuner's first, cheapest check: what cannot fit in memory, and what cannot meet the TPOT objective even at the
roofline, is dropped before anything runs; every kept configuration keeps its prediction to set beside what it
measures.

Both figures are lower bounds, so a configuration is dropped only when it cannot work, never because it might not:
memory is the weights in the configuration's format plus the KV cache of its largest batch at full length (no
activations, no allocator slack); the time per output token is one decode step at batch 1 reading every weight once
over the memory bandwidth (llmopt.measure.roofline). On a GPU the bandwidth is the datasheet's (the roofline table);
on a CPU, which has no datasheet figure here, it is measured on the spot (a large array copied, best of several), so
it is what this host sustains, not a peak.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from llmopt.tuning.space import PUBLISHED, Config


@dataclass(frozen=True)
class Host:
    label: str
    memory_bytes: int  # GPU memory, or the RAM available when the tuner started
    bandwidth_gb_s: float
    source: str  # where the bandwidth comes from
    on_gpu: bool


@dataclass(frozen=True)
class Estimate:
    memory_bytes: int  # the least the configuration needs
    tpot_floor_ms: float  # the least time of one output token at batch 1
    weight_bytes: int
    dtype: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measured_bandwidth_gb_s(size_mb: int = 256, repeats: int = 5) -> float:
    """Bytes read plus written per second copying a large array on this host (the best of `repeats`)."""
    import numpy as np

    a = np.ones(size_mb << 17, dtype=np.float64)  # size_mb MiB
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - started)
    return 2 * a.nbytes / best / 1e9


def _available_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host() -> Host:
    """This machine as the estimate sees it: its first GPU (the roofline table's entry) or its CPU (measured)."""
    from llmopt.measure import environment, roofline

    gpu = environment.gpu_info()
    if gpu:
        spec = roofline.gpu_for_device(gpu.get("name"))
        memory = int(gpu.get("memory_bytes") or (spec.memory_gb * 1e9 if spec else 0))
        if spec is not None:
            return Host(gpu["name"], memory, spec.bandwidth_gb_s, f"datasheet ({spec.source})", True)
    label = environment.device_label(None)
    return Host(
        label, _available_ram(), measured_bandwidth_gb_s(), "measured here: a 256 MiB array copied, best of 5", bool(gpu)
    )  # a GPU the table does not know: the bound is the host's memory, loosely


def _arch(model: str) -> tuple[Any, bool]:
    """The model's architecture, and whether its embedding table is its output head (stored once)."""
    from llmopt.models import resolve
    from llmopt.models.architecture import Architecture

    path = resolve.fetch(model, weights="random").path
    config = resolve.load_config(model, path, trust_remote_code=False)
    return Architecture.from_config(config), bool(getattr(config, "tie_word_embeddings", False))


def dtype_here(model: str, on_gpu: bool) -> str:
    """The dtype the configuration runs in without --dtype: the dtype rule of llmopt's transformers modes."""
    from llmopt.models import resolve
    from llmopt.strategies.hf import default_dtype

    path = resolve.fetch(model, weights="random").path
    return default_dtype("cuda" if on_gpu else "cpu", resolve.load_config(model, path, trust_remote_code=False))


def estimate(config: Config, host_: Host, batch: int, tokens_per_sequence: int, dtype: str) -> Estimate:
    """Memory and TPOT lower bounds of one configuration at `batch` sequences of `tokens_per_sequence` tokens."""
    from llmopt.measure import roofline

    mode = config.quality_mode()
    arch, tied = _arch(mode.model)
    options = dict(mode.options)
    if mode.strategy == "llamacpp":
        gguf = options.get("gguf_type", PUBLISHED)
        fmt = roofline.weight_format("llamacpp", dtype, f"gguf-{gguf}" if gguf != PUBLISHED else None)
        weights = _published_gguf_bytes(mode.model) if gguf == PUBLISHED else None
        weights = weights or roofline.weights_bytes(arch, fmt)
    else:
        fmt = roofline.weight_format(mode.strategy, dtype)
        weights = roofline.weights_bytes(arch, fmt)
        if tied:  # the head is the embedding table: stored once (in the head's format)
            weights -= arch.vocab * arch.hidden * fmt.activation_bytes
    kv_bytes = 1 if str(options.get("kv_cache_dtype", "auto")).startswith("fp8") else fmt.activation_bytes
    kv = arch.kv_values_per_token() * kv_bytes * batch * tokens_per_sequence
    moved = arch.layer_params * fmt.layer_bytes_moved + arch.head_params * fmt.head_bytes_per_param
    if mode.strategy == "llamacpp" and options.get("gguf_type", PUBLISHED) == PUBLISHED:
        moved = weights
    floor_ms = 1000 * moved / (host_.bandwidth_gb_s * 1e9)
    return Estimate(int(weights + kv), floor_ms, int(weights), dtype)


def _published_gguf_bytes(model: str) -> int | None:
    """A packaged model's GGUF file size: what llama.cpp reads per token, exactly (embeddings aside)."""
    from llmopt.models import packaged

    if model not in packaged.ALIASES:
        return None
    try:
        return packaged.gguf_file(model).stat().st_size
    except Exception:  # not installed: the format's figure stands
        return None


def batch_of(config: Config) -> int:
    """The most sequences the configuration runs at once: what its KV cache must hold."""
    return int(config.get("batch_size") or config.get("max_num_seqs") or 1)


@dataclass(frozen=True)
class Pruned:
    config: Config
    reason: str  # "memory" or "tpot"
    detail: str


def prune(configs: list[Config], host_: Host, tokens_per_sequence: int, tpot_limit_ms: float | None,
          dtype: str, memory_share: float = 0.9) -> tuple[list[tuple[Config, Estimate]], list[Pruned]]:  # fmt: skip
    """Keep what can fit and can meet the TPOT objective at its floor; the rest with the figure that drops it.
    `memory_share`: of the host's memory, what a model may take (the rest is the system's and the engine's)."""
    kept, pruned = [], []
    for config in configs:
        est = estimate(config, host_, batch_of(config), tokens_per_sequence, dtype)
        budget = memory_share * host_.memory_bytes
        if est.memory_bytes > budget:
            pruned.append(Pruned(config, "memory", f"needs at least {est.memory_bytes / 2**30:.2f} GiB (weights and "
                                 f"KV cache), {memory_share:.0%} of this host's memory is {budget / 2**30:.2f} GiB"))  # fmt: skip
        elif tpot_limit_ms is not None and est.tpot_floor_ms > tpot_limit_ms:
            pruned.append(Pruned(config, "tpot", f"TPOT floor {est.tpot_floor_ms:.1f} ms (every weight read once per "
                                 f"token at {host_.bandwidth_gb_s:.0f} GB/s) > the objective {tpot_limit_ms:g} ms"))  # fmt: skip
        else:
            kept.append((config, est))
    return kept, pruned
