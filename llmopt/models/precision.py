"""At what precision a checkpoint is stored and runs: its dtype and the one rule every engine applies to it, its
quantization (and the check that a quantized mode gets a quantized checkpoint), and the bytes of its tensors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError


def checkpoint_dtype(config: Any) -> str | None:
    """The dtype the checkpoint's weights are stored in, from its config ("float16", "bfloat16", ...), or None."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if value is None:
        return None
    return str(value).removeprefix("torch.")


def serving_dtype(checkpoint: str | None, device: str, cuda_capability: tuple[int, int] | None, native_bf16: bool) -> str:
    """One rule for every engine (transformers and vLLM alike), so that they are compared at the same precision.

    On a GPU: the checkpoint's 16-bit dtype, but fp16 for bf16 checkpoints on GPUs without bf16 (compute capability
    below 8.0, as the T4); 32-bit or unspecified checkpoints run in bf16 where the GPU has it, else fp16 (as vLLM
    serves them). On a CPU: bf16 where the CPU computes it natively (AVX512-BF16, AMX), else float32, since emulated
    bf16 is slower than float32 there.
    """
    if device == "cuda":
        has_bf16 = cuda_capability is not None and cuda_capability >= (8, 0)
        if checkpoint == "float16":
            return "float16"
        return "bfloat16" if has_bf16 else "float16"
    return "bfloat16" if native_bf16 else "float32"


def quant_method(config: Any) -> str | None:
    """The quantization a checkpoint was saved with (`quantization_config.quant_method`), lower case, or None."""
    quant = getattr(config, "quantization_config", None)
    if not quant:
        return None
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    return str(getattr(method, "value", method)).lower() if method else None


def require_quantization(config: Any, method: str, strategy: str, model: str) -> None:
    """A strategy made for pre-quantized weights refuses a checkpoint of another kind, which would silently run in
    16 bits (transformers) or with another kernel (vLLM) and be reported under the wrong name."""
    found = quant_method(config)
    if found != method:
        raise UsageError(f"strategy {strategy!r} needs a {method.upper()} checkpoint; {model!r} is {found or 'not quantized'}")


# safetensors dtype codes: bytes per element, and whether the engine casts them to the run's dtype.
_SAFETENSORS_DTYPES = {
    "F64": (8, True), "F32": (4, True), "F16": (2, True), "BF16": (2, True), "F8_E4M3": (1, False),
    "F8_E5M2": (1, False), "I64": (8, False), "I32": (4, False), "I16": (2, False), "I8": (1, False), "U8": (1, False),
    "BOOL": (1, False),
}  # fmt: skip


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


# A decoder layer's tensors: model.layers.N. (Llama, Qwen, Mistral), transformer.h.N. (GPT-2), ...blocks.N.
_IN_LAYER = re.compile(r"(^|\.)(layers|h|blocks|block)\.\d+\.")


def is_linear_weight(name: str, shape: list[int]) -> bool:
    """A linear layer's weight matrix inside a decoder layer (attention and MLP projections), which weight
    quantization (vLLM's FP8) stores in fewer bits; norms (1-D), the embedding and the LM head stay as they are."""
    return len(shape) == 2 and name.endswith(".weight") and _IN_LAYER.search(name) is not None


def checkpoint_bytes(folder: str, run_dtype: str | None, linear_bytes: int | None = None) -> int | None:
    """The bytes of a checkpoint's tensors once loaded: floating tensors at the run's dtype, packed integer tensors
    (AWQ, GPTQ) as stored. Read from the safetensors headers alone; None without safetensors files. `linear_bytes`:
    the bytes per weight of floating linear-layer weights where the engine quantizes them as it loads (1: FP8),
    plus one 4-byte scale per matrix."""
    import struct

    total, found = 0, False
    files = sorted(Path(folder).glob("*.safetensors"))
    index = Path(folder) / "model.safetensors.index.json"
    if index.is_file():  # a sharded checkpoint: its shards only (a repository may hold the weights twice)
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        files = [f for f in files if f.name in shards]
    for path in files:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            size, floating = _SAFETENSORS_DTYPES.get(info["dtype"], (1, False))
            if floating and run_dtype in _DTYPE_BYTES:
                size = _DTYPE_BYTES[run_dtype]
            count = 1
            for dim in info["shape"]:
                count *= dim
            if floating and linear_bytes is not None and is_linear_weight(name, info["shape"]):
                size = linear_bytes
                total += 4  # its scale, one float32 per matrix
            total += count * size
            found = True
    return total if found else None
