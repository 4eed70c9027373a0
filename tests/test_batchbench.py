"""llmopt.batchbench: prefill and decode per batch size, in-process, values checked against their definitions."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_usage_error, read_json, run_cli

PROMPT, NEW = 160, 16  # over one vLLM CPU cache block (128 tokens): a prefix cache would have something to serve


@pytest.mark.parametrize("strategy", ["default", "vllm"])
def test_batch_sweep_reports_prefill_and_decode(tmp_path: Path, strategy: str):
    if strategy == "vllm":
        pytest.importorskip("vllm")
    out = tmp_path / strategy
    extra = ["--enforce-eager"] if strategy == "vllm" else []
    result = run_cli(
        "llmopt.batchbench", "--strategy", strategy, "--model", "tiny", "--batch-sizes", "4,1,2", "--prompt-tokens",
        str(PROMPT), "--max-new-tokens", str(NEW), "--repeats", "3", "--out", out, *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert [r["batch_size"] for r in summary["batches"]] == [1, 2, 4]
    for r in summary["batches"]:
        b, lat, tps = r["batch_size"], r["prefill_latency_ms"], r["prefill_tokens_per_s"]
        assert r["status"] == "ok" and r["repeats"] == 3
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        # The fastest prefill is the highest throughput: batch x prompt tokens over its latency.
        assert tps["max"] == pytest.approx(b * PROMPT / (lat["min"] / 1000))
        dec, dtps = r["decode_latency_ms_per_token"], r["decode_tokens_per_s"]
        resolved = r["repeats"] - r["decode_unresolved_repeats"]
        if resolved:  # a repeat whose full call was not slower than its prefill call is left out, not divided by
            assert dtps["max"] == pytest.approx(b * 1000 / dec["min"])
            assert dec["min"] > 0
        else:
            assert dec["p50"] is None and dtps["p50"] is None
        # Every timed prompt token was computed: the repeats send the same prompts, so a prefix cache would serve
        # them and the prefill would time a lookup.
        assert r["prefix_cached_tokens"] == 0
    assert summary["engine"]["architecture"]["layers"] == 2 and summary["device"]
    if strategy == "vllm":
        assert summary["prefix_caching"] is False and "prefix caching off" in (out / "report.md").read_text()
    for name in ("summary.csv", "report.md", "env.json", "plots/latency.png", "plots/throughput.png"):
        assert (out / name).is_file(), name
    assert "| 4 |" in (out / "report.md").read_text()


def test_compiled_strategy_compiles_before_the_clock(tmp_path: Path):
    """The warm-up runs at the timed lengths, so no graph is compiled (nor static cache resized) while timing."""
    out = tmp_path / "compile"
    result = run_cli(
        "llmopt.batchbench", "--strategy", "compile", "--model", "tiny", "--batch-sizes", "2", "--prompt-tokens", "64",
        "--new-tokens", "8", "--repeats", "2", "--out", out, "--no-plots",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = read_json(out / "summary.json")["batches"]
    assert row["status"] == "ok" and row["compilations_while_timed"] == 0


def test_batchbench_errors(tmp_path: Path):
    assert_usage_error(run_cli("llmopt.batchbench", "--strategy", "lead", "--out", tmp_path / "a"), "no model to benchmark")
    assert_usage_error(
        run_cli("llmopt.batchbench", "--strategy", "default", "--model", "tiny", "--batch-sizes", "0,2"), "at least 1"
    )
    too_long = ["--strategy", "default", "--model", "tiny", "--prompt-tokens", "4000", "--out", tmp_path / "b"]
    assert_usage_error(run_cli("llmopt.batchbench", *too_long), "exceeds the model's context of 2048")
    assert not (tmp_path / "b").exists()
    assert_usage_error(run_cli("llmopt.batchbench", "--strategy", "default", "--model", "llama-2-7b"), "--weights random")
