"""Prompts with a length but no text (`--workload`), for models without real weights or without a tokenizer: the
study's 100 document lengths, or a fixed length; the token ids are drawn at random, away from the special ids."""

from __future__ import annotations

import csv
from typing import Any

from llmopt.documents.datasets import Document
from llmopt.errors import UsageError
from llmopt.paths import DATA_DIR

WORKLOADS = "wikilingua (the study's 100 document lengths) or fixed:N (100 prompts of N tokens)"


def load_workload(spec: str) -> list[Document]:
    """Prompts with lengths but no text, for models without real weights or a tokenizer (`--workload`)."""
    if spec == "wikilingua":
        with open(DATA_DIR / "lcary_2024_document_tokens.csv", newline="", encoding="utf-8") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: int(r["position"]))
        return [Document(f"wl{int(r['position']):03d}", "", "", int(r["document_tokens"])) for r in rows]
    name, _, value = spec.partition(":")
    if name == "fixed" and value.isdigit() and int(value) > 0:
        return [Document(f"fixed{i:03d}", "", "", int(value)) for i in range(100)]
    raise UsageError(f"unknown workload {spec!r}: use {WORKLOADS}")


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
