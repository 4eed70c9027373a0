"""Where llmopt's files live: the data shipped inside the package, and the cache for what it builds or downloads."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"


def cache_dir() -> Path:
    """~/.cache/llmopt, or LLMOPT_CACHE: the Wikilingua sample, tiny checkpoints, architecture folders."""
    return Path(os.environ.get("LLMOPT_CACHE", Path.home() / ".cache" / "llmopt"))
