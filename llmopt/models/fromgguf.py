"""A transformers checkpoint made once from a GGUF file, so that every mode (not only llama.cpp's) runs a GGUF model.

transformers reads a GGUF file and dequantizes its weights (`from_pretrained(folder, gguf_file=NAME)`), but its
`save_pretrained` refuses a model loaded that way; the checkpoint is therefore written here: the weights as
safetensors in float32 (a 4-bit block's scale times its integer plus its offset is exact in float32, not in 16 bits),
the config, the tokenizer with the file's chat template, and a greedy generation config. It is cached under
`<cache>/from-gguf/<file stem>-sha256-<digest>-v<recipe>/`: the name says the source file and its content.

The weights are the quantized file's, widened: a mode run on this checkpoint is compared with the other modes of the
same (quantized) model, not with the model before quantization.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError
from llmopt.files import build_once
from llmopt.paths import cache_dir

RECIPE_VERSION = 2  # part of the cache name: bump when the checkpoint's recipe changes (2: config names its class)
MARKER = "llmopt_from_gguf.json"


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime: float) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def digest(path: Path) -> str:
    """The file's SHA-256 (computed once per process for an unchanged file)."""
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime)


def file_type(path: Path) -> str:
    """The GGUF file's weight type as llama.cpp names it (Q4_1, Q8_0, F16...), from `general.file_type`."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    if field is None:
        return "unknown"
    try:
        return gguf.LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"type {int(field.contents())}"


def folder_for(path: Path) -> Path:
    return cache_dir() / "from-gguf" / f"{path.stem}-sha256-{digest(path)[:12]}-v{RECIPE_VERSION}"


def ensure(path: Path) -> Path:
    """The cached checkpoint of GGUF file `path`, written on first use (one process builds it, the others wait)."""
    return build_once(folder_for(path), MARKER, lambda staging: build(path, staging))


def build(path: Path, out: Path) -> Path:
    """Dequantize GGUF file `path` with transformers and write it as a checkpoint folder `out`."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    transformers.utils.logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, OSError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"transformers cannot read {path.name} ({first}): only llamacpp runs it") from None
    template = _chat_template(path)
    if template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
    state: dict[str, Any] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # the embedding table again: safetensors keeps no shared tensor, and loading re-ties it
        state[name] = tensor.detach().to(torch.float32).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    model.config.dtype = torch.float32
    model.config.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)  # {"quant_method": "gguf"}: these weights are plain float32 now
    # The class to build: a config saved from a GGUF load has none, and `transformers serve` (unlike
    # AutoModelForCausalLM) builds the class the config names.
    config["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(out)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, do_sample=False
    ).save_pretrained(out)
    marker = {"source": path.name, "sha256": digest(path), "gguf_type": file_type(path), "version": RECIPE_VERSION}
    (out / MARKER).write_text(json.dumps(marker, indent=2))
    return out


def _chat_template(path: Path) -> str | None:
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    return str(field.contents()) if field is not None else None


def source_of(folder: str | Path) -> dict[str, Any] | None:
    """The marker of a checkpoint made here from a GGUF file (its source, digest and type), or None."""
    marker = Path(folder) / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None
