"""CPU benchmark (a script that prints numbers, not a test): docs/s of `default` at batch 1 and 16.

The `small` tiny model (about 25M parameters), 16 documents of exactly 256 prompt tokens, 64 forced new tokens.
Each configuration runs in its own process REPEATS times; the median docs/s is reported, load and warm-up
excluded (see llmopt.run's metric definitions).

    .venv/bin/python scripts/bench_cpu.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from llmopt import measure, tiny
from llmopt.data import PROMPTS, load_dataset

N_DOCS, PROMPT_TOKENS, NEW_TOKENS = 16, 256, 64


def documents_of_exact_length(model: Path) -> list[dict]:
    """Documents whose published-hf prompt is exactly PROMPT_TOKENS tokens long."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    words = " ".join(d.document for d in load_dataset("sample")).split()
    docs = []
    for i in range(N_DOCS):
        start = i * 37 % len(words)
        pool = (words[start:] + words[:start]) * 2
        n = 1
        while len(tokenizer(PROMPTS["published-hf"](" ".join(pool[: n + 1])))["input_ids"]) <= PROMPT_TOKENS:
            n += 1
        text = " ".join(pool[:n])
        length = len(tokenizer(PROMPTS["published-hf"](text))["input_ids"])
        if length != PROMPT_TOKENS:  # a word can add several tokens; pad with single-token words
            while length < PROMPT_TOKENS:
                text += " a"
                length = len(tokenizer(PROMPTS["published-hf"](text))["input_ids"])
        if length != PROMPT_TOKENS:
            raise SystemExit(f"could not build a {PROMPT_TOKENS}-token prompt (got {length})")
        docs.append({"id": f"bench-{i}", "document": text, "summary": "unused"})
    return docs


def run_once(dataset: Path, batch_size: int, out: Path, dtype: str | None) -> dict:
    cmd = [
        sys.executable, "-m", "llmopt.run", "--strategy", "default", "--model", "tiny-small", "--dataset", str(dataset),
        "--batch-size", str(batch_size), "--max-new-tokens", str(NEW_TOKENS), "--ignore-eos", "--out", str(out),
    ]  # fmt: skip
    if dtype:
        cmd += ["--dtype", dtype]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="override the CPU default dtype")
    args = parser.parse_args()
    model = tiny.ensure("tiny-small")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "bench.jsonl"
        dataset.write_text("".join(json.dumps(d) + "\n" for d in documents_of_exact_length(model)))
        results: dict[int, list[float]] = {}
        dtype = "?"
        for batch_size in (1, 16):
            for r in range(args.repeats):
                summary = run_once(dataset, batch_size, Path(tmp) / f"b{batch_size}-{r}", args.dtype)
                assert summary["n_completed"] == N_DOCS and summary["output_tokens_mean"] == NEW_TOKENS
                results.setdefault(batch_size, []).append(summary["docs_per_sec"])
                dtype = summary["dtype"]
                print(f"batch {batch_size:>2}  run {r + 1}: {summary['docs_per_sec']:.3f} docs/s", flush=True)
    medians = {b: statistics.median(v) for b, v in results.items()}
    print(
        f"\nmachine: {measure.device_label(None)}, dtype {dtype} ({'set by --dtype' if args.dtype else 'the CPU default here'})"
    )
    print(
        f"model: tiny-small (random Llama, ~25M params), {N_DOCS} docs x {PROMPT_TOKENS} prompt tokens, {NEW_TOKENS} new tokens"
    )
    for b, m in medians.items():
        print(f"default  batch {b:>2}: {m:.3f} docs/s  ({m * NEW_TOKENS:.0f} output tokens/s), median of {len(results[b])}")
    print(f"batch 16 / batch 1: {medians[16] / medians[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
