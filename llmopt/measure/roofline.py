"""The least time a GPU could take for a run: how far each strategy is from what the hardware allows.

The model (README, "Roofline") in one paragraph: the prefill of a batch costs the larger of its FLOPs over the
compute rate and the bytes it must move (weights once, KV cache written) over the memory bandwidth; it yields the
first output token. Each later token is one decode step for the sequences still generating: the larger of
(weight bytes + the KV cache those sequences read) over bandwidth and the step's FLOPs over the compute rate.
Peak datasheet rates, no kernel overhead, no padding: a true lower bound, never a prediction.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmopt.models.architecture import Architecture
from llmopt.paths import DATA_DIR


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gb: float
    bandwidth_gb_s: float
    fp16_tflops: float  # dense tensor-core rate, fp16/bf16 inputs (fp32 accumulate where the card halves it)
    int8_tops: float  # dense tensor-core rate
    fp32_tflops: float  # non-tensor fp32 (PyTorch leaves TF32 off for matmuls by default)
    fp8_tflops: float  # dense FP8 tensor-core rate; 0 where the GPU has none (before Ada and Hopper)
    source: str

    def times(self, count: int) -> GpuSpec:
        """`count` of these GPUs working on one model (tensor parallelism): their memory, bandwidth and rates add
        up. Communication between them costs nothing here, so the bound stays a lower bound."""
        if count == 1:
            return self
        return GpuSpec(
            f"{count}x {self.name}", self.memory_gb * count, self.bandwidth_gb_s * count, self.fp16_tflops * count,
            self.int8_tops * count, self.fp32_tflops * count, self.fp8_tflops * count, self.source,
        )  # fmt: skip


def _load_gpus() -> dict[str, GpuSpec]:
    """Dense rates from NVIDIA's datasheets (their headline tensor figures assume 2:4 sparsity: twice these)."""
    with open(DATA_DIR / "gpus.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    numbers = ("memory_gb", "bandwidth_gb_s", "fp16_tflops", "int8_tops", "fp32_tflops", "fp8_tflops")
    return {r["name"]: GpuSpec(r["name"], *(float(r[k]) for k in numbers), r["source"]) for r in rows}


GPUS: dict[str, GpuSpec] = _load_gpus()


# torch's device name -> table entry; first match wins. Grace Hopper's names contain "H200" and "H100" inside a
# longer word ("GH200"), so the Hopper patterns start at a word boundary.
_NAME_PATTERNS = (
    (r"\bT4\b", "T4"),
    (r"A10G", "A10G"),
    (r"\bL4\b", "L4"),
    (r"A100.*80\s*GB", "A100-80GB"),
    (r"A100", "A100-40GB"),
    (r"\bGH200\b.*\b144\s*G", "GH200-144GB"),
    (r"\bGH200\b", "GH200-96GB"),
    (r"\bH100\b.*\bNVL\b", "H100-NVL"),
    (r"\bH100\b.*PCIe", "H100-PCIe"),
    (r"\bH100\b.*(SXM|HBM3)", "H100-SXM"),
    (r"\bH200\b.*\bNVL\b", "H200-NVL"),
    (r"\bH200\b", "H200"),
    (r"L40S", "L40S"),
    (r"RTX 4090", "RTX-4090"),
    (r"RTX A6000", "RTX-A6000"),
)


def is_mig(device_name: str | None) -> bool:
    """A MIG instance ('NVIDIA A100-SXM4-80GB MIG 1g.10gb'): a slice of a GPU, with a share of its memory, bandwidth
    and compute that no datasheet gives."""
    return bool(device_name) and re.search(r"\bMIG\b", device_name or "") is not None


def gpu_for_device(device_name: str | None) -> GpuSpec | None:
    """The table entry for a CUDA device name such as 'NVIDIA H100 80GB HBM3', or None for unknown devices and for
    a MIG slice (the whole GPU's rates would bound it far too low)."""
    if not device_name or is_mig(device_name):
        return None
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return GPUS[key]
    return None


@dataclass(frozen=True)
class WeightFormat:
    """How a strategy stores layer weights, and which tensor-core rate its matmuls run at."""

    layer_bytes_per_param: float
    head_bytes_per_param: float  # lm_head: the quantizers leave it in 16 bits
    activation_bytes: int  # also the KV cache's element size
    rate: str  # "fp16", "int8" or "fp32"
    # Bytes a forward pass moves per layer weight where it is more than the stored bytes (an eager dequantizing path)
    layer_traffic_per_param: float | None = None
    # Where a fused kernel reads the stored weights for calls of up to this many rows (tokens in one forward pass) and
    # only larger calls take the dequantizing path. None: every call takes it.
    fused_max_rows: int | None = None

    @property
    def layer_bytes_moved(self) -> float:
        """Per layer weight, on the dequantizing path where there is one."""
        return self.layer_traffic_per_param or self.layer_bytes_per_param

    def layer_bytes_moved_for(self, rows: int) -> float:
        """Per layer weight, in a forward pass over `rows` tokens."""
        if self.fused_max_rows is not None and rows <= self.fused_max_rows:
            return self.layer_bytes_per_param
        return self.layer_bytes_moved


# GGUF types as llama.cpp stores them: bytes per weight (blocks of 32 with a 16-bit scale; q4_k_m mixes 4.5-bit
# Q4_K with 6.5625-bit Q6_K tensors, about 4.85 bits on average for a Llama), the output tensor in Q6_K for the 4-bit
# types; llama.cpp's CUDA kernels multiply quantized weights with int8 dot products.
GGUF_FORMATS = {
    "f16": (2.0, 2.0, "fp16"),
    "q8_0": (34 / 32, 34 / 32, "int8"),
    "q4_0": (18 / 32, 6.5625 / 8, "int8"),
    "q4_k_m": (4.85 / 8, 6.5625 / 8, "int8"),
}


# bitsandbytes 0.50's 4-bit matmul on CUDA (`bitsandbytes::gemm_4bit`): a call of at most 4 rows (decoding at batch 1
# to 4) always runs its fused kernel, which reads the packed weights and their absmax as stored. A larger call may
# instead dequantize the whole weight into a 16-bit copy and multiply that (dequantize + F.linear: the 4-bit weight
# read, the copy written and read again, as eager torchao-int8 does); which one it takes depends on the GPU's
# architecture, its SM count and the matrix shape, up to 1536 rows; above that always the copy, and in float32
# always from 8 rows on. The bound counts the copy only where every GPU makes it, and the stored bytes elsewhere, so
# it stays a lower bound (bitsandbytes 0.45 to 0.49 made the copy from 2 rows on: their floor is lower still).
BNB_4BIT_FUSED_ROWS = {2: 1536, 4: 7}  # by the compute dtype's width in bytes


def weight_format(strategy: str, dtype: str | None, quantization: str | None = None) -> WeightFormat:
    """bitsandbytes 8-bit: int8 weights and int8 matmuls. 4-bit (bnb NF4/FP4, AWQ, GPTQ, torchao int4): 4-bit weights
    plus their scales, dequantized to 16 bits for the matmul. torchao int8: int8 weights, 16-bit matmuls. FP8
    (vllm-fp8, torchao-fp8): 8-bit weights and FP8 matmuls. GGUF: llama.cpp's types. Otherwise: the run's dtype."""
    width = 4 if dtype == "float32" else 2
    rate = "fp32" if dtype == "float32" else "fp16"
    name = strategy.split(":")[-1]
    quantization = quantization or ""
    if name == "8bit":
        # LLM.int8 (bitsandbytes 0.50): the int8 weight is read once by an int8 matmul at every size; only the
        # columns that meet an outlier activation (rare) are dequantized, and those few are not counted.
        return WeightFormat(1.0, 2, width, "int8")
    if name == "4bit":
        stored = 0.5 + 4 / 64  # an fp32 absmax per block of 64
        return WeightFormat(stored, 2, width, rate, layer_traffic_per_param=stored + 2 * width,
                            fused_max_rows=BNB_4BIT_FUSED_ROWS[width])  # fmt: skip
    # vLLM names the kernel it picked: awq_marlin, gptq_marlin, auto_awq, auto_gptq... (all 4-bit with group scales).
    if name in ("gptq", "vllm-awq", "vllm-gptq") or any(k in quantization for k in ("awq", "gptq")):
        return WeightFormat(0.5 + (2 + 0.5) / 128, 2, width, "fp16")  # fp16 scale and 4-bit zero per group of 128
    if name == "torchao-int4":
        return WeightFormat(0.5 + 4 / 128, 2, width, rate)  # bf16 scale and zero per group of 128 (GPU packing)
    if name == "torchao-int8":
        # Eager (torchao 0.18 without torch.compile): the int8 weight is read, written back in the compute dtype, and
        # that copy read by the matmul.
        return WeightFormat(1.0, 2, width, rate, layer_traffic_per_param=1.0 + 2 * width)
    if name in ("torchao-fp8", "vllm-fp8") or quantization == "fp8":
        return WeightFormat(1.0, 2, width, "fp8")
    if name == "llamacpp" or quantization.startswith("gguf-"):
        layer, head, gguf_rate = GGUF_FORMATS.get(quantization.removeprefix("gguf-") or "q4_k_m", GGUF_FORMATS["q4_k_m"])
        return WeightFormat(layer, head, 2, gguf_rate)
    return WeightFormat(width, width, width, rate)


def weights_bytes(arch: Architecture, fmt: WeightFormat) -> int:
    """Bytes of a model's weights in a format: layers and head as stored, plus the embedding table in 16 bits."""
    stored = arch.layer_params * fmt.layer_bytes_per_param + arch.head_params * fmt.head_bytes_per_param
    return int(stored + arch.vocab * arch.hidden * fmt.activation_bytes)


@dataclass
class Phase:
    seconds: float = 0.0
    memory_bound_s: float = 0.0  # time of the steps where bandwidth, not compute, set the pace

    def add(self, flops: float, bytes_moved: float, gpu: GpuSpec, rate: float) -> None:
        compute_s = flops / rate
        memory_s = bytes_moved / (gpu.bandwidth_gb_s * 1e9)
        self.seconds += max(compute_s, memory_s)
        if memory_s >= compute_s:
            self.memory_bound_s += memory_s

    @property
    def bound_by(self) -> str | None:
        if self.seconds == 0:
            return None
        return "memory bandwidth" if self.memory_bound_s >= self.seconds / 2 else "compute"


@dataclass
class Bound:
    seconds: float
    docs: int
    prefill: Phase
    decode: Phase

    @property
    def docs_per_sec(self) -> float:
        return self.docs / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "docs_per_sec": self.docs_per_sec,
            "seconds_per_doc": self.seconds / self.docs,
            "seconds": self.seconds,
            "prefill_s": self.prefill.seconds,
            "decode_s": self.decode.seconds,
            "prefill_bound_by": self.prefill.bound_by,
            "decode_bound_by": self.decode.bound_by,
        }


def _rate(gpu: GpuSpec, fmt: WeightFormat) -> float:
    # GPUs without FP8 tensor cores (fp8_tflops 0) cannot run FP8 matmuls: bound them at their 16-bit rate.
    fp8 = gpu.fp8_tflops or gpu.fp16_tflops
    return {"fp16": gpu.fp16_tflops, "int8": gpu.int8_tops, "fp32": gpu.fp32_tflops, "fp8": fp8}[fmt.rate] * 1e12


def least_time(
    arch: Architecture,
    fmt: WeightFormat,
    gpu: GpuSpec,
    batches: Sequence[Sequence[tuple[int, int]]],
    weight_bytes: float | None = None,
) -> Bound:
    """Lower bound on the time of `batches`, each a list of (prompt tokens, output tokens) run together.
    `weight_bytes`: the bytes a forward pass reads, where the model file says so exactly (GGUF)."""
    rate = _rate(gpu, fmt)

    def weights_read(rows: int) -> float:
        if weight_bytes is not None:
            return weight_bytes
        return arch.layer_params * fmt.layer_bytes_moved_for(rows) + arch.head_params * fmt.head_bytes_per_param

    kv_bytes_per_token = arch.kv_values_per_token() * fmt.activation_bytes
    attention_width = arch.heads * arch.head_dim
    token_flops = 2 * (arch.layer_params + arch.head_params)
    prefill, decode = Phase(), Phase()
    docs = 0
    for batch in batches:
        docs += len(batch)
        # Prefill: every prompt position through the layers, causal attention (p^2/2 pairs, QK and AV at 2 FLOPs
        # each), the head for the last position only; it yields the first output token.
        flops = sum(
            2 * arch.layer_params * p + 2 * arch.layers * p * p * attention_width + 2 * arch.head_params for p, _ in batch
        )
        prompt_tokens = sum(p for p, _ in batch)
        prefill.add(flops, weights_read(prompt_tokens) + prompt_tokens * kv_bytes_per_token, gpu, rate)
        steps = max((o for _, o in batch), default=0)
        for step in range(1, steps):
            active = [p + step for p, o in batch if o > step]  # context length of each sequence still generating
            context = sum(active)
            flops = len(active) * token_flops + 4 * arch.layers * attention_width * context
            decode.add(flops, weights_read(len(active)) + context * kv_bytes_per_token, gpu, rate)
    return Bound(prefill.seconds + decode.seconds, docs, prefill, decode)


def run_batches(pairs: Sequence[tuple[int, int]], batch_size: int | None) -> list[list[tuple[int, int]]]:
    """Group (prompt, output) pairs the way the runner does: longest prompts first; None: one engine batch."""
    ordered = sorted(pairs, key=lambda po: -po[0])
    size = batch_size or len(ordered) or 1
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def for_summary(
    device: str, engine: dict[str, Any], strategy: str, batch_size: int | None, pairs: Sequence[tuple[int, int]]
) -> dict[str, Any]:
    """roofline_* fields of a summary: filled on a known GPU for a model whose architecture the strategy reported."""
    empty = {"roofline_gpu": None, "roofline_gpus": None, "roofline_docs_per_sec": None, "roofline_note": None}
    if is_mig(device):
        return {**empty, "roofline_note": f"no roofline for a MIG slice ({device}): its share of the GPU's bandwidth "
                "and compute is not the datasheet's"}  # fmt: skip
    if engine.get("device") == "cpu":  # an engine that ran on the CPU of a GPU machine (llama.cpp built without CUDA)
        return empty
    gpu = gpu_for_device(device)
    arch = engine.get("architecture")
    if gpu is None or not arch or not pairs:
        return empty
    quantization = engine.get("quantization")
    fmt = weight_format(strategy, engine.get("dtype"), quantization if isinstance(quantization, str) else None)
    # A tensor-parallel run has the bandwidth and compute of all its GPUs; bounding it by one would let it pass 100%.
    count = int(engine.get("tensor_parallel_size") or 1)
    bound = least_time(Architecture(**arch), fmt, gpu.times(count), run_batches(pairs, batch_size),
                       engine.get("streamed_weight_bytes"))  # fmt: skip
    note = None
    if engine.get("speculative"):
        note = "speculative decoding checks several tokens per weight read; the bound counts one, so it can be passed"
    elif fmt.fused_max_rows is not None:
        note = (
            f"bitsandbytes 4-bit: the bound counts the stored 4 bits a weight for calls of up to {fmt.fused_max_rows} "
            "tokens (its fused kernel; some GPUs dequantize to a 16-bit copy sooner) and that copy above"
        )
    elif fmt.layer_traffic_per_param:
        note = "eager dequantization: the bound counts the 16-bit copy of each weight that every matmul writes and reads"
    return {"roofline_gpu": gpu.name, "roofline_gpus": count, "roofline_docs_per_sec": bound.docs_per_sec,
            "roofline_note": note}  # fmt: skip
