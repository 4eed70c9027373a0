"""Prompts with a length but no text (`--workload`), for models without real weights or without a tokenizer: the
study's 100 document lengths, or a fixed length; the token ids are drawn at random, away from the special ids."""

from __future__ import annotations

import csv
from dataclasses import dataclass
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


class RandomText:
    """Prompt texts made of random ordinary tokens of one tokenizer, each decoded from its own seeded draw: a
    request's synthetic prompt is unique (as vLLM's random dataset makes them), so no server can answer it from a
    prefix cache; a shared prefix is one draw reused on purpose."""

    def __init__(self, tokenizer: Any, seed: int) -> None:
        special = set(tokenizer.all_special_ids)
        self.tokenizer = tokenizer
        ids = [i for i in range(len(tokenizer)) if i not in special]
        # A lone byte of a multi-byte character decodes to U+FFFD, which never round-trips: not an ordinary token.
        pieces = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=True)
        self.vocab = [i for i, piece in zip(ids, pieces, strict=True) if piece and "\ufffd" not in piece]
        self.seed = seed

    def ids(self, n_tokens: int, key: int | str) -> list[int]:
        import random

        rng = random.Random(f"{self.seed}:{key}")
        return rng.choices(self.vocab, k=n_tokens)

    def text(self, n_tokens: int, key: int | str) -> str:
        """Exactly n_tokens of the model's own tokens when encoded again (special tokens aside): the draw is decoded,
        encoded, then cut where the round trip grew (byte pieces that decode to a replacement character, merges) or
        padded with further draws where it shrank, until the count holds (a cut that comes back unchanged has its
        last token drawn again). The draws come from one seeded generator, so a shorter prompt of the same key starts
        as a longer one's first draw does."""
        import random

        rng = random.Random(f"{self.seed}:{key}")
        ids = rng.choices(self.vocab, k=n_tokens)
        for _ in range(100):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            back = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(back) == n_tokens:
                return text
            if len(back) < n_tokens:
                ids = back + rng.choices(self.vocab, k=n_tokens - len(back))
            elif back[:n_tokens] != ids:
                ids = back[:n_tokens]
            else:  # a piece that never survives the round trip alone (a lone byte): draw it again
                ids = ids[:-1] + rng.choices(self.vocab, k=1)
        raise RuntimeError(f"no text of exactly {n_tokens} tokens found for {key!r} in 100 round trips")


@dataclass(frozen=True)
class TraceRow:
    """One request of a Mooncake trace: when it arrives (ms from the trace's start), its prompt and answer lengths,
    and the ids of the 512-token blocks its prompt shares with other requests."""

    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


TRACE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
MOONCAKE_BLOCK_TOKENS = 512  # the block size Mooncake's traces hash prompts by


def load_trace(path: str) -> list[TraceRow]:
    """A Mooncake-format JSONL trace; a missing file, a bad line or a missing field is a usage error naming it."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--trace {path}: {exc.strerror or exc}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise UsageError(f"--trace {path}, line {number}: not JSON") from None
        missing = [name for name in TRACE_FIELDS if not isinstance(row, dict) or name not in row]
        if missing:
            raise UsageError(
                f"--trace {path}, line {number}: missing {', '.join(missing)} (Mooncake format: {', '.join(TRACE_FIELDS)})"
            )
        try:
            parsed = TraceRow(float(row["timestamp"]), int(row["input_length"]), int(row["output_length"]),
                              tuple(int(h) for h in row["hash_ids"]))  # fmt: skip
        except (TypeError, ValueError):
            raise UsageError(f"--trace {path}, line {number}: timestamp, lengths and hash_ids must be numbers") from None
        if parsed.input_length < 1 or parsed.output_length < 1:
            raise UsageError(f"--trace {path}, line {number}: input_length and output_length must be at least 1")
        rows.append(parsed)
    if not rows:
        raise UsageError(f"--trace {path}: no requests in it")
    return sorted(rows, key=lambda r: r.timestamp_ms)


def trace_prompt(text: RandomText, row: TraceRow, index: int, block_texts: dict[int, str]) -> str:
    """The prompt of one trace row: the text of each shared block (the same for every row naming that hash id, so a
    prefix cache sees what Mooncake saw), cut to input_length tokens; a last partial block and any length beyond the
    blocks are drawn for this row alone."""
    parts = []
    left = row.input_length
    for h in row.hash_ids:
        if left <= 0:
            break
        if left >= MOONCAKE_BLOCK_TOKENS:
            if h not in block_texts:
                block_texts[h] = text.text(MOONCAKE_BLOCK_TOKENS, f"block{h}")
            parts.append(block_texts[h])
            left -= MOONCAKE_BLOCK_TOKENS
        else:
            parts.append(text.text(left, f"block{h}"))  # same start as the whole block: the shared part stays shared
            left = 0
    if left > 0:
        parts.append(text.text(left, f"row{index}"))
    return "".join(parts)
