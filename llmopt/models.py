"""Where a `--model` points: a tiny alias (built on first use), a shipped architecture (config only, for
`--weights random`), a local folder, or a Hub id; missing ones are usage errors."""

from __future__ import annotations

import json
import shutil
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"model {model!r} is not a local folder and could not be loaded from the Hub: {first}") from None


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
