"""Sweeps and reports end to end on the tiny model: crashes, OOMs, resuming, bad YAML, numbers checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, assert_usage_error, read_json, run_cli, write_jsonl

FAULTS = ROOT / "tests" / "fault_strategies.py"


def write_experiment(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(body)
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("sweep")
    rows = [
        {"id": f"d{i}", "document": f"Step {i}. Boil water. Add salt. Stir well.", "summary": "Boil water."} for i in range(5)
    ]
    rows.append({"id": "huge", "document": "OOM-ALWAYS " + "word " * 150, "summary": "s"})
    dataset = write_jsonl(tmp / "docs.jsonl", rows)
    spec = write_experiment(
        tmp,
        f"""
name: test-sweep
hardware: A100-40GB
price_per_hour: 3.0
model: tiny
dataset: {dataset}
generation: {{max_new_tokens: 6, ignore_eos: true}}
timeout_s: 300
reproduce: {{table: lcary-2024, gpu: A100-40GB}}
cells:
  - strategy: lead
  - strategy: default
    batch_size: [1, 2]
  - strategy: {FAULTS}:CudaOomAboveTwo
    name: oom
    batch_size: 4
  - strategy: {FAULTS}:Broken
    name: crash
  - strategy: gptq
""",
    )
    out = tmp / "results"
    result = run_cli("llmopt.sweep", spec, "--out", out)
    assert result.returncode == 0, result.stderr
    return spec, out


def test_sweep_runs_every_cell_and_records_failures(swept):
    _, out = swept
    cells = {p.name for p in out.iterdir() if p.is_dir() and p.name != "plots"}
    assert cells == {"lead", "default-b1", "default-b2", "oom-b4", "crash", "gptq"}
    assert read_json(out / "default-b1" / "summary.json")["status"] == "ok"
    oom = read_json(out / "oom-b4" / "summary.json")
    assert oom["status"] == "oom" and oom["n_oom"] == 1
    crash = read_json(out / "crash" / "summary.json")
    assert crash["status"] == "failed" and crash["errors"] == ["ValueError: kernel exploded"]
    unavailable = read_json(out / "gptq" / "sweep_cell.json")  # exit 2 left no run folder: the sweep wrote this
    assert unavailable["status"] == "failed" and "pip install optimum gptqmodel" in unavailable["stderr_tail"]


def test_report_numbers_match_the_runs(swept):
    _, out = swept
    report = (out / "report.md").read_text()
    for cell in ("lead", "default-b1", "default-b2", "oom-b4"):
        s = read_json(out / cell / "summary.json")
        line = next(line for line in report.splitlines() if line.startswith(f"| {cell} |"))
        assert f"{s['docs_per_sec']:.3f}" in line and f"{s['rouge1']:.4f}" in line and s["status"] in line
    # The study's headline row for default at batch 1 on the A100 stands beside ours, with the ratio.
    b1 = next(line for line in report.splitlines() if line.startswith("| default-b1 |"))
    ours = read_json(out / "default-b1" / "summary.json")["docs_per_sec"]
    assert "0.3167" in b1 and "316.25" in b1 and f"{ours / 0.3167:.2f}×" in b1
    # Failures table in the study's form: strategy, GPU, batch size, error, documents.
    oom_lines = [line for line in report.splitlines() if "OutOfMemoryError" in line and "A100-40GB" in line]
    assert [line.split("|")[1:4] for line in oom_lines] == [[" CudaOomAboveTwo ", " A100-40GB ", f" {n} "] for n in (4, 2, 1)]
    assert "kernel exploded" in report and "exit code 2" in report and "pip install optimum gptqmodel" in report


def test_report_recommendations_and_pareto_follow_the_numbers(swept):
    _, out = swept
    report = (out / "report.md").read_text()
    # Model cells that completed; lead and the lead-based fault strategy are baselines (no model).
    models = {c: read_json(out / c / "summary.json") for c in ("default-b1", "default-b2")}
    fastest = max(models, key=lambda c: models[c]["docs_per_sec"])
    assert f"- Fastest: **{fastest}**, {models[fastest]['docs_per_sec']:.3f} docs/s" in report
    assert "Quality floor without a model: **lead**" in report
    assert "Cost = $3/hour" in report
    tokens_per_s = models[fastest]["output_tokens_per_s"]
    assert f"Cheapest per 1M output tokens: **{fastest}**, ${3.0 * 1e6 / (3600 * tokens_per_s):.3g}." in report
    front_line = next(line for line in report.splitlines() if line.startswith("Pareto front"))
    assert "lead" not in front_line and fastest in front_line


def test_summary_csv_and_plots(swept):
    _, out = swept
    import csv

    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["cell"] for r in rows] == ["lead", "default-b1", "default-b2", "oom-b4", "crash", "gptq"]
    b2 = next(r for r in rows if r["cell"] == "default-b2")
    assert float(b2["docs_per_sec"]) == pytest.approx(read_json(out / "default-b2" / "summary.json")["docs_per_sec"])
    for name in ("docs_per_sec.png", "run_time.png", "peak_memory.png", "rouge1_vs_docs_per_sec.png"):
        png = out / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_rerun_skips_finished_cells_and_resumes_a_half_done_one(swept):
    spec, out = swept
    finished = (out / "default-b1" / "summary.json").stat().st_mtime_ns
    (out / "default-b2" / "summary.json").unlink()  # as if the sweep was stopped inside this cell
    kept = (out / "default-b2" / "records.jsonl").read_text()
    result = run_cli("llmopt.sweep", spec, "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "default-b1" / "summary.json").stat().st_mtime_ns == finished
    assert "default-b1: done earlier (ok), skipped" in result.stderr
    resumed = read_json(out / "default-b2" / "summary.json")
    assert resumed["status"] == "ok" and resumed["n_completed"] == 6
    assert (out / "default-b2" / "records.jsonl").read_text() == kept, "finished documents were not redone"
    # Failed cells are tried again; the report is rewritten.
    assert "cell 5/6 crash: failed" in result.stderr


def test_a_cell_past_its_timeout_is_a_failed_row(tmp_path: Path):
    spec = write_experiment(tmp_path, "name: slow\nmodel: tiny\ndataset: sample\ntimeout_s: 2\ncells:\n  - strategy: default\n")
    out = tmp_path / "out"
    result = run_cli("llmopt.sweep", spec, "--out", out)
    assert result.returncode == 0, result.stderr
    state = json.loads((out / "default" / "sweep_cell.json").read_text())
    assert state["status"] == "failed" and state["errors"] == ["timed out after 2 s"]
    assert "timed out after 2 s" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("name: x\ncells: [{strategy: lead}]\nbogus: 1\n", "unknown key 'bogus'"),
        ("name: x\ncells:\n  - strategy: lead\n    options: {warp_speed: true}\n", "unknown option 'warp_speed'"),
        ("name: x\ncells:\n  - strategy: default\n    batch_size: [1, 0]\n", "batch_size must be at least 1"),
        ("name: x\ngeneration: {max_new_tokens: many}\ncells: [{strategy: lead}]\n", "'generation.max_new_tokens' must be int"),
        ("name: x\ncells: [{strategy: lead}\n", "not valid YAML"),
        ("cells: [{strategy: lead}]\n", "missing key 'name'"),
        ("name: x\ncells:\n  - strategy: default\n    batch_size: big\n", "batch_size must be a whole number or auto, got 'big'"),
        ("name: x\nweights: fake\ncells: [{strategy: default}]\n", "'weights' must be pretrained or random"),
        ("name: x\ndataset: sample\nworkload: wikilingua\ncells: [{strategy: default}]\n", "'dataset' or 'workload'"),
        ("name: x\nreproduce: {table: nope}\ncells: [{strategy: lead}]\n", "reproduce.table"),
    ],
)
def test_malformed_experiments_are_named(tmp_path: Path, body: str, fragment: str):
    spec = write_experiment(tmp_path, body)
    assert_usage_error(run_cli("llmopt.sweep", spec, "--out", tmp_path / "out"), fragment, "exp.yaml")


def test_published_table_prints_alone():
    result = run_cli("llmopt.report", "--published", "lcary-2024")
    assert result.returncode == 0, result.stderr
    assert "Luc Cary" in result.stdout and "4.2731" in result.stdout and "vllm-awq" in result.stdout


def test_auto_batch_random_weights_and_workload_reach_the_run_command():
    from llmopt import experiment

    body = (
        "name: g\nmodel: llama-2-7b\nweights: random\nworkload: wikilingua\n"
        "cells:\n  - strategy: default\n    batch_size: [1, auto]\n"
    )
    exp = experiment.parse(__import__("yaml").safe_load(body), "g.yaml")
    assert [c.name for c in exp.cells] == ["default-b1", "default-bauto"]
    args = exp.cells[1].run_args(exp)
    assert args[:6] == ["--strategy", "default", "--workload", "wikilingua", "--batch-size", "auto"]
    assert "--weights" in args and "--dataset" not in args


def test_shipped_experiments_are_valid():
    from llmopt import experiment

    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        exp = experiment.load(path)
        assert exp.cells, path
