"""Where a `--model` points: a tiny alias (built on first use), a local folder, or a Hub id; missing ones are usage errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmopt.errors import UsageError


def resolve(model: str) -> str:
    from llmopt import tiny

    if model in tiny.ALIASES:
        return str(tiny.ensure(model))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"model folder {model!r} has no config.json")
        return str(path)
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise UsageError(f"model folder {model!r} does not exist")
    return model


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
