"""transformers checkpoints to GGUF (llama.cpp's format): converted once, quantized with llama.cpp's own quantizer,
and cached under a name that says the source and the type.

llama-cpp-python's wheel does not ship llama.cpp's converter script, so the conversion is written here for the
architectures llmopt ships: Llama and Mistral (GGUF architecture `llama`) and Qwen2 (`qwen2`). Others are refused in
one line. The tensors are written in 16 bits (norms in 32, as llama.cpp does) with the `gguf` package; q8_0, q4_0 and
q4_k_m come from `llama_model_quantize`, exactly as llama.cpp's `llama-quantize` makes them.

Tokenizers: byte-level BPE (GPT-2 style: the tiny models, Llama-3, Qwen2) as GGUF `gpt2`, with the pre-tokenizer
named from its split pattern; SentencePiece (Llama-2, Mistral v0.1) as GGUF `llama`, from tokenizer.model with its
scores. The chat template goes along.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError
from llmopt.paths import cache_dir

CONVERTER_VERSION = 2  # part of the cache key: bump when the conversion changes
# --gguf-type -> llama.cpp's file type (None: the 16-bit file itself)
GGUF_TYPES: dict[str, str | None] = {
    "f16": None,
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}
# transformers model_type -> GGUF architecture, and whether q/k are permuted for llama.cpp's rotary layout
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}
# Byte-level BPE pre-tokenizers llama.cpp knows, by the split pattern of tokenizer.json
GPT2_PATTERN = None  # ByteLevel with its own regex (GPT-2's): no Split pattern in tokenizer.json
LLAMA3_PATTERN_START = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
QWEN2_PATTERN_START = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"


@dataclass(frozen=True)
class Converted:
    path: Path
    seconds: float  # converting and quantizing; 0 when the cached file was used


def cache_path(source: str, gguf_type: str) -> Path:
    """One file per source checkpoint and type: the key covers the folder, its weights' sizes and times, the type."""
    folder = Path(source).resolve()
    stamp = [CONVERTER_VERSION, str(folder), gguf_type]
    for f in sorted(folder.glob("*")):
        if f.suffix in (".safetensors", ".json", ".model"):
            stat = f.stat()
            stamp.append(f"{f.name}:{stat.st_size}:{int(stat.st_mtime)}")
    digest = hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{folder.name}-{digest}-{gguf_type}.gguf"


def convert(source: str, gguf_type: str) -> Converted:
    """The cached GGUF of a transformers checkpoint folder at `gguf_type`, made on first use."""
    if gguf_type not in GGUF_TYPES:
        raise UsageError(f"--gguf-type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    target = cache_path(source, gguf_type)
    if target.is_file():
        return Converted(target, 0.0)
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    f16 = cache_path(source, "f16")
    if not f16.is_file():
        _staged(f16, lambda staging: write_f16(Path(source), staging))
    if GGUF_TYPES[gguf_type] is not None:
        _staged(target, lambda staging: quantize(f16, staging, gguf_type))
    return Converted(target, time.perf_counter() - started)


def _staged(target: Path, write: Any) -> None:
    """Write to a temporary name beside `target`, then rename: a half-written file is never taken for a model."""
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(staging)
        staging.replace(target)
    finally:
        staging.unlink(missing_ok=True)


def quantize(source: Path, target: Path, gguf_type: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, GGUF_TYPES[gguf_type] or "")
    params.nthread = len(os.sched_getaffinity(0))
    failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if failed:
        raise RuntimeError(f"llama.cpp could not quantize {source.name} to {gguf_type} (code {failed})")


def _permute(weights: Any, heads: int) -> Any:
    """transformers keeps each head's rotary halves apart (rotate_half); llama.cpp's `llama` architecture expects
    them interleaved. The same reordering llama.cpp's own converter applies to q and k."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def write_f16(folder: Path, target: Path) -> None:
    import gguf
    import numpy as np
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UsageError(f"converting {model_type!r} checkpoints to GGUF is not written here (only {known}): pass a .gguf file")
    if config.get("quantization_config"):
        raise UsageError(
            f"{folder.name} is already quantized ({config['quantization_config'].get('quant_method')}): GGUF needs 16-bit weights"
        )
    arch_name, permute = ARCHITECTURES[model_type]
    arch = gguf.MODEL_ARCH.LLAMA if arch_name == "llama" else gguf.MODEL_ARCH.QWEN2
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads
    layers = config["num_hidden_layers"]
    writer = gguf.GGUFWriter(str(target), arch_name, use_temp_file=True)
    writer.add_name(folder.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    rope = rope_of(config, folder.name)
    writer.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    _write_tokenizer(writer, folder, config)
    names = gguf.get_tensor_name_map(arch, layers)
    if rope.get("rope_type") == "llama3":  # llama.cpp reads Llama-3.1's frequency scaling as a tensor of factors
        factors = llama3_rope_factors(rope, head_dim)
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", np.array(factors, np.float32))
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        files = [f for f in files if f.name in shards]
    if not files:
        raise UsageError(f"{folder} holds no safetensors weights to convert")
    for file in files:  # with tied embeddings there is no lm_head: llama.cpp then reuses token_embd, as intended
        with safe_open(str(file), framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                data = tensors.get_tensor(name).float().numpy()
                if permute and name.endswith("q_proj.weight"):
                    data = _permute(data, heads)
                elif permute and name.endswith("k_proj.weight"):
                    data = _permute(data, kv_heads)
                mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if mapped is None:
                    raise UsageError(f"{folder.name}: no GGUF name for tensor {name!r}")
                # 1-D tensors (norms, biases) stay in 32 bits, as llama.cpp's converter keeps them.
                writer.add_tensor(mapped, data.astype(np.float32 if data.ndim == 1 else np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def rope_of(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The rotary settings: transformers 5 keeps them in `rope_parameters`, older checkpoints in `rope_theta` and
    `rope_scaling`. Plain rotary and Llama-3.1's scaling convert; other scalings are refused rather than dropped."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind not in ("default", "llama3"):
        raise UsageError(f"{name}: converting rope scaling {kind!r} to GGUF is not written here; pass a .gguf file")
    return {**rope, "rope_type": kind}


def llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> list[float]:
    """Llama-3.1's per-frequency scaling as factors dividing each rotary frequency: long wavelengths slowed by
    `factor`, short ones kept, a smooth blend between (the rule transformers' `_compute_llama3_parameters` applies)."""
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    context = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for i in range(0, head_dim, 2):
        wavelength = 2 * math.pi * rope["rope_theta"] ** (i / head_dim)
        if wavelength < context / high:
            factors.append(1.0)
        elif wavelength > context / low:
            factors.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def _write_tokenizer(writer: Any, folder: Path, config: dict[str, Any]) -> None:
    import gguf

    spec_path = folder / "tokenizer.json"
    if not spec_path.is_file():
        raise UsageError(f"{folder} has no tokenizer.json: llama.cpp needs the tokenizer inside the GGUF file")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    model = spec["model"]
    added = {t["id"]: bool(t.get("special")) for t in spec.get("added_tokens", [])}
    size = config["vocab_size"]
    if model.get("type") == "BPE" and not model.get("byte_fallback") and (spec.get("decoder") or {}).get("type") == "ByteLevel":
        vocab = model["vocab"]
        for token in spec.get("added_tokens", []):
            vocab.setdefault(token["content"], token["id"])
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise UsageError(f"{folder.name}: the tokenizer's ids are not contiguous; cannot write it to GGUF")
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_bpe_pre_tokenizer(spec, folder))
        if len(by_id) > size:
            raise UsageError(f"{folder.name}: the tokenizer has {len(by_id)} tokens, the model only {size} rows")
        # Special added tokens are control tokens, other added ones user-defined (never split), as llama.cpp's
        # converter types them. Rows past the tokenizer (Qwen2 pads its embedding to a round size) get placeholder
        # tokens: llama.cpp wants one token per row.
        types = [
            (gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED) if i in added else gguf.TokenType.NORMAL
            for _, i in by_id
        ]
        padding = [f"[PAD{i}]" for i in range(len(by_id), size)]
        writer.add_token_list([t for t, _ in by_id] + padding)
        writer.add_token_types(types + [gguf.TokenType.UNUSED] * len(padding))
        merges = model.get("merges", [])
        writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    elif (folder / "tokenizer.model").is_file():
        vocab = gguf.vocab.SentencePieceVocab(folder)
        tokens, scores, types = zip(*vocab.all_tokens(), strict=True)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(list(tokens))
        writer.add_token_scores(list(scores))
        writer.add_token_types(list(types))
    else:
        raise UsageError(f"{folder.name}: its tokenizer is neither byte-level BPE nor SentencePiece; cannot write it to GGUF")
    specials = gguf.SpecialVocab(folder, load_merges=False, n_vocab=config["vocab_size"])
    specials.add_to_gguf(writer, quiet=True)


def _bpe_pre_tokenizer(spec: dict[str, Any], folder: Path) -> str:
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer, from its split pattern."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    patterns = [s.get("pattern", {}).get("Regex", "") for s in steps if s.get("type") == "Split"]
    if not patterns and any(s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps):
        return "gpt-2"
    if patterns and patterns[0].startswith(LLAMA3_PATTERN_START):
        return "llama-bpe"
    if patterns and patterns[0].startswith(QWEN2_PATTERN_START):
        return "qwen2"
    raise UsageError(f"{folder.name}: its BPE pre-tokenizer is not one llama.cpp is known to match; cannot convert it")


def tensor_bytes(path: Path) -> tuple[int, int]:
    """The bytes of a GGUF file's tensors as stored, and of those a forward pass reads: all but the token embedding
    table, of which it reads one row per token."""
    import gguf

    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}
    total = sum(tensors.values())
    # With tied embeddings (no output.weight) the table is also the output projection, read whole every pass.
    return total, total - (tensors.get("token_embd.weight", 0) if "output.weight" in tensors else 0)


def context_length(path: Path) -> int | None:
    """The context length a GGUF file was trained for (`<arch>.context_length`), or None."""
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    arch = fields.get("general.architecture")
    key = f"{arch.contents()}.context_length" if arch is not None else None
    return int(fields[key].contents()) if key in fields else None
