"""CPU benchmark (a script that prints numbers, not a test): docs/s of `default` at batch 1 and 16, and of `vllm`;
with --modes, also llama.cpp (q8_0, q4_k_m), torchao (int8, int4), prompt lookup and vLLM's n-gram speculation.

The `small` tiny model (about 25M parameters), 16 documents of exactly 256 prompt tokens, 64 forced new tokens.
Each configuration runs in its own process REPEATS times; the median docs/s is reported, load and warm-up
excluded (see llmopt.run's metric definitions). vLLM gets all 16 documents in one call (its own batching)
and runs with its defaults; it is left out when the vllm package is not installed.

    .venv/bin/python scripts/bench_cpu.py [--repeats 3] [--modes]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from llmopt.documents.datasets import load_dataset
from llmopt.documents.prompts import PROMPTS
from llmopt.measure import environment
from llmopt.models import tiny

N_DOCS, PROMPT_TOKENS, NEW_TOKENS = 16, 256, 64


def documents_of_exact_length(model: Path, n_docs: int = N_DOCS, prompt_tokens: int = PROMPT_TOKENS) -> list[dict]:
    """Documents whose published-hf prompt is exactly `prompt_tokens` tokens long (under `model`'s tokenizer)."""
    from transformers import AutoTokenizer

    PROMPT_TOKENS = prompt_tokens
    tokenizer = AutoTokenizer.from_pretrained(model)
    words = " ".join(d.document for d in load_dataset("sample")).split()
    docs = []
    for i in range(n_docs):
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


def run_once(dataset: Path, strategy: str, batch_size: int, out: Path, dtype: str | None, extra: list[str]) -> dict:
    cmd = [
        sys.executable, "-m", "llmopt.run", "--strategy", strategy, "--model", "tiny-small", "--dataset", str(dataset),
        "--batch-size", str(batch_size), "--max-new-tokens", str(NEW_TOKENS), "--ignore-eos", "--out", str(out), *extra,
    ]  # fmt: skip
    if dtype:
        cmd += ["--dtype", dtype]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="override the CPU default dtype")
    parser.add_argument("--modes", action="store_true", help="also llama.cpp, torchao and speculative decoding")
    args = parser.parse_args()
    model = tiny.ensure("tiny-small")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "bench.jsonl"
        dataset.write_text("".join(json.dumps(d) + "\n" for d in documents_of_exact_length(model)))
        configs: list[tuple[str, str, int, list[str]]] = [
            ("default batch 1", "default", 1, []), ("default batch 16", "default", 16, []),
        ]  # fmt: skip
        if importlib.util.find_spec("vllm") is not None:
            configs.append(("vllm (engine batching)", "vllm", 1, []))
        if args.modes:
            configs += [
                ("llamacpp q8_0", "llamacpp", 1, ["--gguf-type", "q8_0"]),
                ("llamacpp q4_k_m", "llamacpp", 1, ["--gguf-type", "q4_k_m"]),
                ("torchao-int8 batch 16", "torchao-int8", 16, []), ("torchao-int4 batch 16", "torchao-int4", 16, []),
                ("prompt-lookup batch 1", "prompt-lookup", 1, []),
            ]  # fmt: skip
            if importlib.util.find_spec("vllm") is not None:
                configs.append(("vllm-ngram (engine)", "vllm-ngram", 1, []))
        results: dict[str, list[float]] = {}
        dtypes: dict[str, str] = {}
        for label, strategy, batch_size, extra in configs:
            for r in range(args.repeats):
                out = Path(tmp) / f"{label.replace(' ', '_')}-{r}"
                summary = run_once(dataset, strategy, batch_size, out, args.dtype, extra)
                assert summary["n_completed"] == N_DOCS and summary["output_tokens_mean"] == NEW_TOKENS
                results.setdefault(label, []).append(summary["docs_per_sec"])
                dtypes[label] = summary["dtype"] or summary["engine"].get("quantization")
                print(f"{label:<26} run {r + 1}: {summary['docs_per_sec']:.3f} docs/s", flush=True)
    medians = {label: statistics.median(v) for label, v in results.items()}
    print(f"\nmachine: {environment.device_label(None)}")
    print(
        f"model: tiny-small (random Llama, ~25M params), {N_DOCS} docs x {PROMPT_TOKENS} prompt tokens, {NEW_TOKENS} new tokens"
    )
    for label, m in medians.items():
        print(
            f"{label:<26} {m:7.3f} docs/s  ({m * NEW_TOKENS:5.0f} output tokens/s, {dtypes[label]}), "
            f"median of {len(results[label])}"
        )
    b1, b16 = medians["default batch 1"], medians["default batch 16"]
    print(f"default batch 16 / batch 1: {b16 / b1:.2f}x")
    if "vllm (engine batching)" in medians:
        v = medians["vllm (engine batching)"]
        print(f"vllm / default batch 16: {v / b16:.2f}x;  vllm / default batch 1: {v / b1:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
