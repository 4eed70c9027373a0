"""Where a `--model` points: a tiny alias (built on first use), a shipped architecture (config only, for
`--weights random`), a local folder, or a Hub id; missing ones are usage errors."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt.data import DATA_DIR, cache_dir
from llmopt.errors import UsageError

ARCHITECTURES_DIR = DATA_DIR / "architectures"
WEIGHTS = ("pretrained", "random")


def architectures() -> list[str]:
    """Names of the shipped model configs (Llama-2 7B/13B/70B and a few current 7-8B models)."""
    return sorted(p.stem for p in ARCHITECTURES_DIR.glob("*.json"))


def architecture_source(name: str) -> str:
    return json.loads((ARCHITECTURES_DIR / f"{name}.json").read_text())["_llmopt_source"]


def _architecture_folder(name: str) -> Path:
    """A folder holding only the shipped config.json: what transformers and vLLM need to build the model."""
    folder = cache_dir() / "architectures" / name
    target = folder / "config.json"
    source = ARCHITECTURES_DIR / f"{name}.json"
    if not target.is_file() or target.read_bytes() != source.read_bytes():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return folder


def check_weights(model: str, weights: str) -> None:
    """A shipped architecture has no weights to load: say what to do instead."""
    if model in architectures() and weights != "random":
        source = architecture_source(model).split("/blob/")[0].removeprefix("https://huggingface.co/")
        raise UsageError(
            f"{model!r} is a shipped architecture without weights: add --weights random, or use {source!r} for the real one"
        )


def resolve(model: str, weights: str = "pretrained") -> str:
    from llmopt import tiny

    if model in tiny.ALIASES:
        return str(tiny.ensure(model))
    if model in architectures():
        check_weights(model, weights)
        return str(_architecture_folder(model))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"model folder {model!r} has no config.json")
        return str(path)
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise UsageError(f"model folder {model!r} does not exist")
    return model


LOCAL_HINT = "pass --model /path/to/folder (a folder with config.json, the weights and the tokenizer)"
# Files of other frameworks and formats, never read by transformers or vLLM from a safetensors repository.
OTHER_FORMATS = [
    "*.msgpack", "*.h5", "*.ot", "*.onnx", "*.onnx_data", "*.gguf", "*.tflite", "*.mlmodel", "*.pth", "*.pt",
    "original/*", "onnx/*", "coreml/*", "openvino/*",
]  # fmt: skip
CONFIG_FILES = ["*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


@dataclass(frozen=True)
class Fetched:
    path: str  # a local folder
    download_s: float | None  # None: nothing had to come from the Hub (a folder, a tiny model, an architecture)


def fetch(model: str, weights: str = "pretrained", trust_remote_code: bool = False) -> Fetched:
    """A local folder holding `model`. A Hub id is downloaded into the Hugging Face cache first (config and tokenizer;
    the weights too unless they are random), and the time it took is returned, so that loading reads local files
    only and load time never includes a download. A Hub that cannot be reached fails in seconds, in one line."""
    path = resolve(model, weights)
    if path != model or Path(model).exists():
        return Fetched(path, None)
    from llmopt import hub

    if hub.offline():
        return Fetched(_cached(model, weights, trust_remote_code), None)
    answer = hub.probe(model)
    if answer.status == "unreachable":
        try:  # a model downloaded earlier still runs without a network
            return Fetched(_cached(model, weights, trust_remote_code), None)
        except UsageError:
            raise UsageError(
                f"model {model!r} is not in the local Hugging Face cache and the Hub cannot be reached "
                f"({answer.detail}): {LOCAL_HINT}"
            ) from None
    if answer.status == "missing":
        raise UsageError(f"model {model!r} does not exist on the Hub ({answer.detail}); or {LOCAL_HINT}")
    if answer.status == "denied":
        raise UsageError(
            f"model {model!r} is gated, private or misspelt ({answer.detail}): for a gated model accept its licence on "
            f"the Hub and set HF_TOKEN (or run `hf auth login`); or {LOCAL_HINT}"
        )
    from huggingface_hub import snapshot_download

    allow, ignore = _patterns(answer.files, weights, trust_remote_code)
    started = time.perf_counter()
    try:
        folder = snapshot_download(model, allow_patterns=allow, ignore_patterns=ignore)
    except Exception as exc:  # a connection lost half-way, a full disk
        raise UsageError(f"downloading {model!r} failed: {type(exc).__name__}: {_first_line(exc)}") from None
    return Fetched(folder, time.perf_counter() - started)


def _patterns(files: list[str], weights: str, trust_remote_code: bool) -> tuple[list[str] | None, list[str]]:
    """What to download: config and tokenizer files, plus one format of the weights (safetensors where there are)."""
    code = ["*.py"] if trust_remote_code else []
    if weights == "random":
        return CONFIG_FILES + code, []
    ignore = list(OTHER_FORMATS) + ([] if trust_remote_code else ["*.py"])
    if any(f.endswith(".safetensors") for f in files):
        ignore += ["*.bin"]
    return None, ignore


def _cached(model: str, weights: str, trust_remote_code: bool) -> str:
    """The model's folder in the local Hugging Face cache, without asking the Hub."""
    from huggingface_hub import snapshot_download

    allow, ignore = _patterns([], weights, trust_remote_code)
    try:
        folder = snapshot_download(model, allow_patterns=allow, ignore_patterns=ignore, local_files_only=True)
    except Exception:
        raise UsageError(
            f"model {model!r} is not a local folder and is not in the local Hugging Face cache, and the Hub is not "
            f"used (HF_HUB_OFFLINE) or cannot be reached: {LOCAL_HINT}"
        ) from None
    if not (Path(folder) / "config.json").is_file():
        raise UsageError(f"model {model!r} in the local Hugging Face cache has no config.json: {LOCAL_HINT}")
    return folder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


def checkpoint_bytes(folder: str, run_dtype: str | None) -> int | None:
    """The bytes of a checkpoint's tensors once loaded: floating tensors at the run's dtype, packed integer tensors
    (AWQ, GPTQ) as stored. Read from the safetensors headers alone; None without safetensors files."""
    import struct

    total, found = 0, False
    for path in sorted(Path(folder).glob("*.safetensors")):
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
            total += count * size
            found = True
    return total if found else None


def has_tokenizer(path: str) -> bool:
    folder = Path(path)
    if not folder.is_dir():
        return True  # a Hub id: the tokenizer comes with it
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def load_config(model: str, path: str, trust_remote_code: bool) -> Any:
    """The model's transformers config, or a one-line usage error saying why it cannot be had."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UsageError(f"model {model!r} needs its own code: pass --trust-remote-code if you trust it") from None
        raise UsageError(f"model {model!r}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"model {model!r} could not be read: {_first_line(exc)}") from None


def random_token_ids(config: Any, n_tokens: int, seed: int) -> list[int]:
    """A prompt of exactly `n_tokens` ids (BOS first where the model has one), drawn away from the special ids."""
    import random

    rng = random.Random(seed)
    bos = getattr(config, "bos_token_id", None)
    specials = [
        i for i in (bos, getattr(config, "eos_token_id", None), getattr(config, "pad_token_id", None)) if isinstance(i, int)
    ]
    low = min(max(specials, default=-1) + 1, config.vocab_size - 1)
    if low > config.vocab_size // 2:  # special ids at the top of the vocabulary (Llama-3, Qwen): draw below them
        low = 0
        high = min(specials) - 1
    else:
        high = config.vocab_size - 1
    ids = [rng.randint(low, high) for _ in range(n_tokens)]
    if bos is not None and n_tokens:
        ids[0] = bos
    return ids
