"""Quality beside speed: drift from a reference mode, paired deltas and the gate, energy, repeats, and reports over
plain runs, several sweeps and a baseline. On the tiny models, for real."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_usage_error, read_json, read_jsonl, run_cli, write_jsonl

from llmopt.quality import paired

DRIFT = ["--model", "tiny", "--reference", "default", "--dataset", "sample", "--limit", "5", "--dtype", "float32",
         "--max-new-tokens", "12"]  # fmt: skip


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("drift") / "d"
    result = run_cli("llmopt.drift", *DRIFT, "--strategies", "8bit,4bit", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_drift_of_the_reference_is_zero_and_quantization_drifts_in_order(drifted: Path):
    summary = read_json(drifted / "summary.json")
    modes = {m["strategy"]: m for m in summary["modes"]}
    assert set(modes) == {"default", "8bit", "4bit"} and all(m["status"] == "ok" for m in modes.values())
    reference = modes["default"]
    assert reference["kl_mean"] == 0.0 and reference["kl_p99"] == 0.0 and reference["top1_agreement"] == 1.0
    # The same weights at 8 and at 4 bits: both drift, and 4 bits more.
    assert 0 < modes["8bit"]["kl_mean"] <= modes["4bit"]["kl_mean"]
    assert modes["8bit"]["top1_agreement"] >= modes["4bit"]["top1_agreement"]
    positions = summary["positions"]
    assert summary["documents"] == 5 and positions == reference["positions"] > 5
    for m in modes.values():
        assert m["perplexity"] > 1 and m["kl_p99"] >= m["kl_mean"] >= 0
        assert "full logits" in m["kl_method"]
        assert m["dtype"] == "float32", "each mode records the dtype it ran"
    assert reference["reference_check"] and not modes["8bit"]["reference_check"]
    assert "| 4bit | tiny | float32 |" in (drifted / "report.md").read_text()


def test_modes_run_at_their_own_dtype_against_a_float32_reference(tmp_path: Path):
    """--modes-dtype: the reference in float32 (and its check, 0), the same strategy in bfloat16 measured apart (a
    cell that ran in bfloat16 is not the reference: its drift is not 0), and every mode's dtype recorded."""
    out = tmp_path / "bf16"
    result = run_cli("llmopt.drift", *DRIFT, "--modes-dtype", "bfloat16", "--strategies", "default,8bit", "--out", out)
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    modes = {m["label"]: m for m in summary["modes"]}
    assert set(modes) == {"default", "default@bfloat16", "8bit"} and all(m["status"] == "ok" for m in modes.values())
    check, bf16 = modes["default"], modes["default@bfloat16"]
    assert check["reference_check"] and check["dtype"] == "float32" and check["kl_mean"] == 0.0
    assert summary["reference"]["dtype"] == "float32"
    assert bf16["strategy"] == "default" and bf16["dtype"] == "bfloat16" and not bf16["reference_check"]
    assert bf16["kl_mean"] > 0 and bf16["dtype_requested"] == "bfloat16"
    assert modes["8bit"]["dtype"] == "bfloat16" and modes["8bit"]["kl_mean"] > 0


def test_the_reference_is_cached_and_other_engines_drift_too(drifted: Path):
    """A second run reuses the reference; vLLM (its top tokens) and llama.cpp (full logits) are measured the same way."""
    pytest.importorskip("vllm")
    pytest.importorskip("llama_cpp")
    reference = drifted / "reference.json"
    before = reference.stat().st_mtime_ns
    result = run_cli("llmopt.drift", *DRIFT, "--strategies", "vllm,llamacpp", "--enforce-eager", "--out", drifted)
    assert result.returncode == 0, result.stderr
    assert reference.stat().st_mtime_ns == before, "the cached reference was reused"
    modes = {m["strategy"]: m for m in read_json(drifted / "summary.json")["modes"]}
    # vLLM in float32 is transformers in float32: the same distributions, within rounding.
    assert modes["vllm"]["kl_mean"] < 1e-9 and modes["vllm"]["top1_agreement"] == 1.0
    assert "lists its top 20 tokens" in modes["vllm"]["kl_method"]
    assert modes["llamacpp"]["status"] == "ok" and modes["llamacpp"]["kl_mean"] > 0  # q4_k_m


def test_chat_prompts_are_templated_once(tmp_path: Path):
    """With --prompt chat the reference's templated prompts are cached; every mode reads that very text, so the
    reference measured against itself is still exactly 0."""
    out = tmp_path / "chat"
    result = run_cli("llmopt.drift", *DRIFT[:-2], "--max-new-tokens", "6", "--limit", "2", "--prompt", "chat",
                     "--strategies", "8bit", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    modes = {m["strategy"]: m for m in read_json(out / "summary.json")["modes"]}
    assert modes["default"]["kl_mean"] == 0.0 and modes["default"]["top1_agreement"] == 1.0
    assert modes["8bit"]["status"] == "ok"
    prompt = read_json(out / "reference.json")["docs"][0]["prompt"]
    assert prompt.count("[user]") == 1, "the tiny model's chat template applied once"


def test_drift_errors(tmp_path: Path):
    assert_usage_error(run_cli("llmopt.drift", *DRIFT, "--out", tmp_path / "x"), "--strategies is required")
    assert_usage_error(run_cli("llmopt.drift", *DRIFT, "--strategies", "8bitt", "--out", tmp_path / "y"), "unknown strategy")


# --- paired deltas and the gate -----------------------------------------------------------------------------------


def test_the_paired_interval_is_narrower_than_the_unpaired_one(tmp_path: Path):
    """Documents differ far more from each other than two modes differ on one document: pairing removes that."""
    import numpy as np

    out = tmp_path / "lead"
    assert run_cli("llmopt.run", "--strategy", "lead", "--dataset", "sample", "--out", out).returncode == 0
    reference = [r["rouge1"] for r in read_jsonl(out / "records.jsonl")]  # real per-document ROUGE-1, widely spread
    mode = list(np.clip(np.array(reference) - 0.01 + np.random.default_rng(1).normal(0, 0.005, len(reference)), 0, 1))
    delta = paired.paired_delta(mode, reference)
    low, high = paired.unpaired_interval(mode, reference)
    assert delta is not None and delta.low < delta.delta < delta.high
    assert (delta.high - delta.low) < 0.5 * (high - low)
    assert delta.high < 0 < high, "paired, the loss is clear; unpaired, it is lost in the documents' spread"


@pytest.mark.parametrize(
    ("ratio_low", "ratio_high", "verdict"),
    [(0.995, 1.02, "passed"), (0.97, 0.985, "failed"), (0.98, 1.01, "inconclusive"), (0.99, 0.995, "passed")],
)
def test_the_gate(ratio_low: float, ratio_high: float, verdict: str):
    """On ROUGE-1, -2 and -L together, as MLPerf: every one must clear the bar, and one below it fails the mode."""
    delta = paired.PairedDelta(10, -0.001, -0.002, 0.0, (ratio_low + ratio_high) / 2, ratio_low, ratio_high)
    clear = paired.PairedDelta(10, 0.0, -0.001, 0.001, 1.0, 0.995, 1.005)
    assert paired.gate([clear, delta, clear]) == verdict
    assert paired.gate([clear, clear, clear]) == "passed"
    assert paired.gate([clear, None, clear]) is None and paired.gate([]) is None
    zero = paired.PairedDelta(10, 0, 0, 0, None, None, None)  # the reference scored 0: nothing to fall below
    assert paired.gate([clear, zero]) == "passed" and paired.gate([zero, zero]) is None


def test_agreement():
    assert paired.agreement(["a  b", "c"], ["a b", "d"]) == 0.5 and paired.agreement([], []) is None


# --- energy and repeats ---------------------------------------------------------------------------------------------


def test_repeats_give_a_spread_and_energy_is_a_number_or_a_reason(tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli("llmopt.run", "--strategy", "default", "--model", "tiny", "--dataset", "sample", "--limit", "6",
                     "--batch-size", "3", "--max-new-tokens", "6", "--ignore-eos", "--repeats", "3", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    s = read_json(out / "summary.json")
    rates = s["docs_per_sec_repeats"]
    assert s["repeats"] == 3 and len(rates) == 3 and rates[0] == s["docs_per_sec_first_pass"]
    assert s["docs_per_sec"] == sorted(rates)[1] and s["docs_per_sec_min"] <= s["docs_per_sec"] <= s["docs_per_sec_max"]
    assert s["docs_per_sec_riqr"] >= 0 and len(read_jsonl(out / "records.jsonl")) == 6, "records from the first pass"
    if s["energy_j"] is None:  # this host has no readable counter: it says why
        assert s["energy_note"] and s["energy_per_doc_j"] is None
    else:
        assert s["energy_j"] > 0 and s["energy_per_doc_j"] == pytest.approx(s["energy_j"] / 18)
        assert s["mean_power_w"] > 0


def test_a_failing_repeat_keeps_the_complete_first_pass(tmp_path: Path):
    faults = Path(__file__).parent / "fault_strategies.py"
    out = tmp_path / "run"
    result = run_cli("llmopt.run", "--strategy", f"{faults}:FailsWhenRepeated", "--dataset", "sample", "--limit", "4",
                     "--no-warmup", "--repeats", "3", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "repeat 2 failed, keeping the passes before it: RuntimeError: engine died" in result.stderr
    s = read_json(out / "summary.json")
    assert s["status"] == "ok" and s["repeats"] == 1 and s["docs_per_sec_repeats"] is None
    assert "engine died" in s["repeat_error"] and len(read_jsonl(out / "records.jsonl")) == 4


def test_rapl_counters_are_read_and_their_wrap_allowed_for(tmp_path: Path):
    """The kernel's powercap files, as an Intel or AMD machine exposes them (a fake root: no machine here has RAPL)."""
    from llmopt.measure import energy

    package = tmp_path / "intel-rapl:0"
    package.mkdir()
    (package / "name").write_text("package-0\n")
    (package / "max_energy_range_uj").write_text("1000000000\n")
    (package / "energy_uj").write_text("999000000\n")  # 1 kJ counter, about to wrap
    sub = tmp_path / "intel-rapl:0:0"
    sub.mkdir()
    (sub / "name").write_text("core\n")  # counted inside the package already
    counters, source, note = energy._rapl(tmp_path)
    assert source == "rapl" and note is None and len(counters) == 1
    meter = energy.EnergyMeter(counters=counters, source=source)
    meter._start = [c.read() for c in counters]
    (package / "energy_uj").write_text("2000000\n")  # wrapped: 1 J to the top, then 2 J
    meter.stop()
    assert meter.joules == pytest.approx(3.0)
    assert energy._rapl(tmp_path / "none")[2].startswith("no RAPL counters")


# --- reports over any results -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for strategy, extra in (("default", ["--dtype", "float32"]), ("8bit", [])):
        # 32 tokens of the random tiny model reach a few reference words: a reference ROUGE above 0, so a ratio
        result = run_cli("llmopt.run", "--strategy", strategy, "--model", "tiny", "--dataset", "sample", "--limit", "12",
                         "--max-new-tokens", "32", "--ignore-eos", "--out", root / strategy, *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr
    return root


def test_report_over_plain_runs_with_the_reference_and_the_gate(plain_runs: Path):
    result = run_cli("llmopt.report", plain_runs)
    assert result.returncode == 0, result.stderr
    report = (plain_runs / "report.md").read_text()
    assert "| default |" in report and "| 8bit |" in report
    quality = report.split("## Quality against the reference")[1].split("##")[0]
    line = next(x for x in quality.splitlines() if x.startswith("| 8bit |"))
    assert "| default |" in line, "the float32 transformers run at batch 1 is the reference"
    assert any(g in line for g in ("passed", "failed", "inconclusive"))
    import csv

    with open(plain_runs / "summary.csv") as f:
        rows = {r["cell"]: r for r in csv.DictReader(f)}
    assert rows["8bit"]["gate"] in ("passed", "failed", "inconclusive") and rows["default"]["gate"] == ""


def test_report_over_two_sweeps_and_against_a_baseline(tmp_path: Path, plain_runs: Path):
    for name in ("machine-a", "machine-b"):  # the same experiment twice, as if on two machines
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(f"name: {name}\nmodel: tiny\ndataset: sample\ngeneration: {{max_new_tokens: 6, limit: 4}}\n"
                        "repeats: 2\ncells:\n  - strategy: default\n  - strategy: lead\n")  # fmt: skip
        result = run_cli("llmopt.sweep", spec, "--out", tmp_path / name, "--no-report")
        assert result.returncode == 0, result.stderr
    out = tmp_path / "both"
    result = run_cli("llmopt.report", tmp_path / "machine-a", tmp_path / "machine-b", "--out", out,
                     "--baseline", tmp_path / "machine-a")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = (out / "report.md").read_text()
    assert "| machine-a/default |" in report and "| machine-b/default |" in report
    regression = report.split("## Against the baseline")[1].split("##")[0]
    line = next(x for x in regression.splitlines() if x.startswith("| machine-b/default |"))
    assert "×" in line and ("within noise" in line or "beyond noise" in line), "both ran 2 timed loops"
    assert_usage_error(run_cli("llmopt.report", tmp_path / "machine-a", tmp_path / "machine-b"), "--out")


def test_published_prints_every_table():
    result = run_cli("llmopt.report", "--published")
    assert result.returncode == 0, result.stderr
    for name in ("lcary-2024:", "hf-sagemaker-2023:", "fmbench-2024:", "lcary-2024-oom:"):
        assert name in result.stdout
    assert "4.2731" in result.stdout and "g5.2xlarge" in result.stdout and "trn1.32xlarge" in result.stdout


def test_a_sweep_runs_its_drift_section_and_reports_it(tmp_path: Path):
    """The drift section measures the modes at the dtype the cells ran (modes_dtype: auto) against a float32
    reference; each cell's row shows the figures measured for its strategy and dtype, whatever this host's dtype."""
    rows = [{"id": f"d{i}", "document": f"Step {i}. Boil the water. Add the salt. Stir it well.", "summary": "Boil water."}
            for i in range(4)]  # fmt: skip
    dataset = write_jsonl(tmp_path / "docs.jsonl", rows)
    spec = tmp_path / "exp.yaml"
    spec.write_text(f"name: d\nmodel: tiny\ndataset: {dataset}\ngeneration: {{max_new_tokens: 6}}\n"
                    "drift: {strategies: [default, 8bit], dtype: float32, modes_dtype: auto}\n"
                    "cells:\n  - strategy: default\n    batch_size: [1, 2]\n  - strategy: 8bit\n")  # fmt: skip
    out = tmp_path / "out"
    result = run_cli("llmopt.sweep", spec, "--out", out)
    assert result.returncode == 0, result.stderr
    modes = read_json(out / "drift" / "summary.json")["modes"]
    assert all(m["status"] == "ok" for m in modes), modes
    quality = (out / "report.md").read_text().split("## Quality against the reference")[1].split("##")[0]
    for cell in ("default-b1", "default-b2", "8bit"):
        state = read_json(out / cell / "summary.json")
        mode = next(m for m in modes if m["strategy"] == state["strategy"] and m["dtype"] == state["dtype"]
                    and not m["reference_check"])  # fmt: skip
        line = next(x for x in quality.splitlines() if x.startswith(f"| {cell} |"))
        assert f"| {mode['kl_mean']:.4g} | {mode['kl_p99']:.4g} | {mode['top1_agreement']:.3f} |" in line, line
        assert line.endswith(f"| {state['strategy']} {state['dtype']} |"), line
