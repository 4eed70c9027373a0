"""--weights random, the shipped architectures, --workload, --batch-size auto and the compiled strategy on the CPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import ROOT, assert_usage_error, read_json, read_jsonl, run_cli

from llmopt.documents import workloads
from llmopt.models import resolve

# Published parameter counts: Llama-2 paper and model cards (6.74B, 13.0B, 69.0B), Llama-3-8B 8.03B, Mistral-7B 7.24B,
# Qwen2.5-7B 7.61B.
PARAMETERS_B = {
    "llama-2-7b": 6.74, "llama-2-13b": 13.02, "llama-2-70b": 68.98,
    "llama-3-8b": 8.03, "mistral-7b": 7.24, "qwen2.5-7b": 7.62,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PARAMETERS_B))
def test_shipped_architectures_build_with_their_published_size(name: str):
    import torch
    from transformers import AutoModelForCausalLM

    config = resolve.load_config(name, resolve.resolve(name, "random"), trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(PARAMETERS_B[name], abs=0.006)
    assert resolve.architecture_source(name).startswith("https://huggingface.co/")


def test_random_token_ids_keep_clear_of_special_tokens():
    llama2 = resolve.load_config("llama-2-7b", resolve.resolve("llama-2-7b", "random"), False)
    ids = workloads.random_token_ids(llama2, 515, seed=3)
    assert len(ids) == 515 and ids[0] == 1 and all(3 <= i < 32000 for i in ids[1:])
    assert ids == workloads.random_token_ids(llama2, 515, seed=3) != workloads.random_token_ids(llama2, 515, seed=4)
    llama3 = resolve.load_config("llama-3-8b", resolve.resolve("llama-3-8b", "random"), False)
    ids = workloads.random_token_ids(llama3, 100, seed=0)
    assert ids[0] == 128000 and all(0 <= i < 128000 for i in ids[1:]), "Llama-3's special ids sit above 128000"


def test_wikilingua_workload_has_the_study_lengths():
    docs = workloads.load_workload("wikilingua")
    lengths = [d.prompt_tokens for d in docs]
    assert len(docs) == 100 and sum(lengths) / 100 == pytest.approx(515.44) and max(lengths) == 3583
    assert [d.prompt_tokens for d in workloads.load_workload("fixed:512")] == [512] * 100


def config_only(tmp_path: Path, tiny_model: Path) -> Path:
    """A model folder like a shipped architecture: a config, no weights, no tokenizer."""
    folder = tmp_path / "arch"
    folder.mkdir()
    shutil.copy(tiny_model / "config.json", folder / "config.json")
    return folder


@pytest.mark.parametrize("strategy", ["default", "8bit", "4bit"])
def test_random_weights_run_every_transformers_mode(tmp_path: Path, tiny_model: Path, strategy: str):
    out = tmp_path / strategy
    result = run_cli(
        "llmopt.run", "--strategy", strategy, "--model", config_only(tmp_path, tiny_model), "--weights", "random",
        "--workload", "fixed:40", "--limit", "4", "--batch-size", "2", "--max-new-tokens", "6", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "random weights never stop on their own" in result.stderr and "not applicable: random weights" in result.stdout
    summary = read_json(out / "summary.json")
    assert summary["status"] == "ok" and summary["n_completed"] == 4 and summary["weights"] == "random"
    assert summary["ignore_eos"] is True and summary["dataset"] == "workload:fixed:40"
    assert summary["prompt_tokens_mean"] == 40 and summary["output_tokens_mean"] == 6
    assert summary["rouge1"] is None and summary["rouge_note"] == "not applicable: random weights"
    assert summary["engine"]["architecture"]["head_dim"] == 64
    if strategy != "default":
        assert summary["engine"]["quantization"]["quant_method"] == "bitsandbytes"
    assert all("rouge1" not in r for r in read_jsonl(out / "records.jsonl"))


def test_auto_batch_size_grows_to_all_documents_when_memory_allows(default_tiny_auto_run):
    result, out = default_tiny_auto_run  # conftest's run: five documents, --batch-size auto, 4 new tokens
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["batch_size"] == 5 and summary["batch_size_requested"] == "auto"
    assert [t["batch_size"] for t in summary["auto_batch"]] == [1, 2, 4, 5] and all(t["fits"] for t in summary["auto_batch"])
    assert {r["batch_size"] for r in read_jsonl(out / "records.jsonl")} == {5}
    assert "batch size auto: 5" in result.stdout


def test_auto_batch_size_keeps_the_largest_that_completed(tmp_path: Path):
    out = tmp_path / "auto"
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(f'{{"id": "d{i}", "document": "Doc {i}. More text here.", "summary": "s"}}\n' for i in range(9)))
    result = run_cli(
        "llmopt.run", "--strategy", f"{ROOT / 'tests' / 'fault_strategies.py'}:CudaOomAboveTwo", "--dataset", docs,
        "--batch-size", "auto", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    # 1 and 2 fit, 4 runs out of memory, bisection tries 3, which also fails: 2 it is.
    assert [(t["batch_size"], t["fits"]) for t in summary["auto_batch"]] == [(1, True), (2, True), (4, False), (3, False)]
    assert summary["batch_size"] == 2 and summary["status"] == "ok" and summary["n_completed"] == 9
    assert summary["oom_events"] == [], "the probe's OOMs are not the run's"


def test_compiled_strategy_matches_eager_greedy_output(tmp_path: Path):
    runs = {}
    for strategy in ("default", "compile"):
        out = tmp_path / strategy
        result = run_cli(
            "llmopt.run", "--strategy", strategy, "--model", "tiny", "--dataset", "sample", "--limit", "5", "--dtype",
            "float32", "--batch-size", "2", "--max-new-tokens", "8", "--out", out,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        runs[strategy] = (read_json(out / "summary.json"), read_jsonl(out / "records.jsonl"))
    summary, records = runs["compile"]
    assert summary["status"] == "ok" and summary["engine"]["compiled"] is True
    assert summary["engine"]["max_cache_len"] == max(r["prompt_tokens"] for r in records) + 8
    assert [r["prediction"] for r in records] == [r["prediction"] for r in runs["default"][1]]
    # Compilation happens in the untimed warm-up, not inside the document loop.
    assert summary["warmup_s"] > summary["generate_s"]


def test_random_weights_and_workload_errors(tmp_path: Path):
    assert_usage_error(
        run_cli("llmopt.run", "--strategy", "8bit", "--model", "llama-2-7b", "--workload", "wikilingua"),
        "shipped architecture without weights", "--weights random", "meta-llama/Llama-2-7b-hf",
    )  # fmt: skip
    assert_usage_error(run_cli("llmopt.run", "--strategy", "lead", "--workload", "wikilingua"), "needs text")
    assert_usage_error(run_cli("llmopt.run", "--strategy", "lead", "--weights", "random"), "no --weights")
    assert_usage_error(
        run_cli("llmopt.run", "--strategy", "default", "--workload", "fixed:1", "--dataset", "sample"), "--workload replaces"
    )
    assert_usage_error(
        run_cli("llmopt.run", "--strategy", "default", "--model", "tiny", "--workload", "fixed:x", "--out", tmp_path / "r"),
        "unknown workload 'fixed:x'",
    )
    assert_usage_error(run_cli("llmopt.run", "--strategy", "default", "--batch-size", "big"), "positive integer or auto")
