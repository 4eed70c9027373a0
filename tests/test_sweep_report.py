"""Sweeps and reports end to end on the tiny model: crashes, OOMs, resuming, bad YAML, numbers checked."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, assert_usage_error, cli_env, read_json, run_cli, write_jsonl

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
  - strategy: default
    name: missing-model
    model: ./no-such-model
  - strategy: {FAULTS}:OomAtLoad
    name: too-big
""",
    )
    out = tmp / "results"
    result = run_cli("llmopt.sweep", spec, "--out", out)
    assert result.returncode == 0, result.stderr
    return spec, out


def test_sweep_runs_every_cell_and_records_failures(swept):
    _, out = swept
    cells = {p.name for p in out.iterdir() if p.is_dir() and p.name != "plots"}
    assert cells == {"lead", "default-b1", "default-b2", "oom-b4", "crash", "gptq", "missing-model", "too-big"}
    assert read_json(out / "default-b1" / "summary.json")["status"] == "ok"
    oom = read_json(out / "oom-b4" / "summary.json")
    assert oom["status"] == "oom" and oom["n_oom"] == 1
    crash = read_json(out / "crash" / "summary.json")
    assert crash["status"] == "failed" and crash["errors"] == ["ValueError: kernel exploded"]
    # A strategy this machine cannot run is not a failure: the run exits 69 with the reason, the sweep records it.
    unavailable = read_json(out / "gptq" / "sweep_cell.json")
    assert unavailable["status"] == "unavailable" and unavailable["returncode"] == 69
    assert unavailable["errors"] == ["strategy 'gptq' cannot run here: missing optimum, gptqmodel: pip install optimum gptqmodel"]
    usage = read_json(out / "missing-model" / "sweep_cell.json")  # exit 2 left no run folder: the sweep wrote this
    assert usage["status"] == "failed" and usage["errors"] == ["exit code 2"] and "does not exist" in usage["stderr_tail"]
    too_big = read_json(out / "too-big" / "summary.json")
    assert too_big["status"] == "oom" and too_big["n_oom"] == 6 and too_big["oom_at_load"]
    # No document loop ran: no loop time (not 0 s), and the report's row says so; the load was timed until the OOM.
    assert too_big["run_s"] is None and too_big["load_s"] > 0
    row = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("| too-big |"))
    cells = row.strip("| ").split(" | ")
    assert cells[3:6] == ["–", "–", "–"], cells  # docs/s, % roofline, run s


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
    oom_lines = [line for line in report.splitlines() if "OutOfMemoryError |" in line and "A100-40GB" in line]
    assert [line.split("|")[1:4] for line in oom_lines] == [[" CudaOomAboveTwo ", " A100-40GB ", f" {n} "] for n in (4, 2, 1)]
    assert "kernel exploded" in report and "exit code 2" in report
    assert "| OomAtLoad | A100-40GB | 1 | OutOfMemoryError while loading the model | 6 |" in report
    absent = report.split("## Not available on this machine")[1].split("##")[0]
    assert "| gptq | gptq | strategy 'gptq' cannot run here: missing optimum, gptqmodel: pip install" in absent
    assert "gptq" not in report.split("## Failures")[1].split("##")[0], "unavailable is not a failure"
    assert "Not compared, since this machine cannot run them: **gptq**" in report


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
    cells = ["lead", "default-b1", "default-b2", "oom-b4", "crash", "gptq", "missing-model", "too-big"]
    assert [r["cell"] for r in rows] == cells
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
    # Failed and unavailable cells are tried again; a model that did not fit at load is a finished verdict.
    assert "cell 5/8 crash: failed" in result.stderr and "cell 6/8 gptq: unavailable" in result.stderr
    assert "too-big: done earlier (oom), skipped" in result.stderr


def test_a_cell_past_its_timeout_is_a_failed_row(tmp_path: Path):
    spec = write_experiment(tmp_path, "name: slow\nmodel: tiny\ndataset: sample\ntimeout_s: 2\ncells:\n  - strategy: default\n")
    out = tmp_path / "out"
    result = run_cli("llmopt.sweep", spec, "--out", out)
    assert result.returncode == 0, result.stderr
    state = json.loads((out / "default" / "sweep_cell.json").read_text())
    assert state["status"] == "failed" and state["errors"] == ["timed out after 2 s"]
    assert "timed out after 2 s" in (out / "report.md").read_text()


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def test_a_timed_out_cell_leaves_no_process_behind(tmp_path: Path):
    """An engine's worker outlives a killed parent unless the whole process group is stopped; this one even
    ignores SIGTERM, as a busy worker may."""
    pidfile = tmp_path / "worker.pid"
    spec = write_experiment(
        tmp_path, f"name: hang\ndataset: sample\ntimeout_s: 5\ncells:\n  - strategy: {FAULTS}:SpawnsWorkerAndHangs\n"
    )
    env = cli_env()
    env["LLMOPT_TEST_PIDFILE"] = str(pidfile)
    result = subprocess.run([sys.executable, "-m", "llmopt.sweep", str(spec), "--out", str(tmp_path / "out")], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    worker = int(pidfile.read_text())
    try:
        assert result.returncode == 0, result.stderr
        state = json.loads((tmp_path / "out" / "SpawnsWorkerAndHangs" / "sweep_cell.json").read_text())
        assert state["errors"] == ["timed out after 5 s"]
        assert state["partial_summary"]["status"] == "partial", "SIGTERM first: the run wrote its partial summary"
        assert not running(worker), "the cell's worker process is still running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_progress_reports_generation_docs_per_sec(swept):
    """The progress line's rate is the run's own docs_per_sec (documents over generation time), read as it goes."""
    from llmopt.sweeps.cells import CellProgress

    _, out = swept
    summary = read_json(out / "default-b1" / "summary.json")
    progress = CellProgress(out / "default-b1" / "records.jsonl")
    progress.update()
    assert progress.done == summary["n_docs"] and progress.docs_per_sec == pytest.approx(summary["docs_per_sec"])
    assert f"{summary['docs_per_sec']:.2f} docs/s generating" in progress.line("cell", 1.0)
    half = out / "half.jsonl"  # a run in progress: the line being written is left for the next read
    lines = (out / "default-b1" / "records.jsonl").read_text().splitlines(keepends=True)
    half.write_text("".join(lines[:3]) + lines[3][:20])
    partial = CellProgress(half)
    partial.update()
    assert partial.done == 3
    with open(half, "a") as f:
        f.write(lines[3][20:])
    partial.update()
    assert partial.done == 4
    # At its end a run rewrites the file in dataset order (a new file, replacing the old): it is read anew.
    rewritten = out / "rewritten.jsonl"
    rewritten.write_text("".join(reversed(lines)))
    os.replace(rewritten, half)
    partial.update()
    assert partial.done == len(lines) and partial.docs_per_sec == pytest.approx(summary["docs_per_sec"])


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
        ("name: x\nhardware: []\ncells: [{strategy: lead}]\n", "'hardware' is an empty list"),
        ("name: x\nhardware: [L4, L4]\ncells: [{strategy: lead}]\n", "names a GPU type twice"),
        ("name: x\nprice_per_hour: {L4: 1}\ncells: [{strategy: lead}]\n", "needs 'hardware' to be a list"),
        ("name: x\nhardware: [L4]\nprice_per_hour: {T4: 1}\ncells: [{strategy: lead}]\n", "'T4', which is not in"),
        ("name: x\nretries: -1\ncells: [{strategy: lead}]\n", "'retries' must be 0 or more"),
        ("name: x\ncells: [{strategy: lead, gpus: -1}]\n", "gpus must be 0 or more"),
        ("name: x\nhardware: [L4]\nreference: lead@L4\ncells: [{strategy: lead}]\n", "without its GPU type ('lead')"),
        ("name: x\ndrift: {strategies: [8bit], modes_dtype: fp8}\ncells: [{strategy: lead}]\n", "'drift.modes_dtype' must be"),
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
    from llmopt.sweeps import experiment

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
    from llmopt.sweeps import experiment
    from llmopt.tuning import space

    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        objective = space.space_objective(path)  # `llmopt tune --space` files live here too
        if objective:
            assert space.load_space(path, objective, "smollm2-135m").configs, path
            continue
        exp = experiment.load(path)
        assert exp.cells, path


def test_a_cell_whose_sweep_dies_stops_too(tmp_path: Path):
    """A cell has a session of its own (no terminal signals reach it): if the sweep is killed outright, the cell is
    told (SIGTERM, PR_SET_PDEATHSIG), writes its partial summary and ends, rather than holding the GPU forever."""
    spec = write_experiment(tmp_path, f"name: orphan\ndataset: sample\ncells:\n  - strategy: {FAULTS}:Hangs\n")
    out = tmp_path / "out"
    sweep = subprocess.Popen([sys.executable, "-m", "llmopt.sweep", str(spec), "--out", str(out)], cwd=ROOT, env=cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    cell = out / "Hangs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (cell / "config.json").is_file():
        time.sleep(0.1)
    time.sleep(1.0)  # the run is in its (endless) generation
    sweep.kill()
    sweep.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (cell / "summary.json").is_file():
        time.sleep(0.2)
    summary = read_json(cell / "summary.json")
    assert summary["status"] == "partial" and summary["n_completed"] == 0


def test_a_timed_out_cell_is_resumed_not_restarted(tmp_path: Path):
    body = "name: slow\ndataset: sample\ntimeout_s: {t}\ncells:\n  - strategy: " + f"{FAULTS}:Slow\n"
    out = tmp_path / "out"
    first = run_cli("llmopt.sweep", write_experiment(tmp_path, body.format(t=3)), "--out", out, "--no-report")
    assert first.returncode == 0, first.stderr
    verdict = json.loads((out / "Slow" / "sweep_cell.json").read_text())
    assert verdict["timed_out"] is True and verdict["errors"] == ["timed out after 3 s"]
    kept = (out / "Slow" / "records.jsonl").read_text().splitlines()
    assert 0 < len(kept) < 22
    second = run_cli("llmopt.sweep", write_experiment(tmp_path, body.format(t=300)), "--out", out, "--no-report")
    assert second.returncode == 0, second.stderr
    summary = read_json(out / "Slow" / "summary.json")
    assert summary["status"] == "ok" and summary["n_completed"] == 22
    records = {json.loads(line)["id"]: line for line in (out / "Slow" / "records.jsonl").read_text().splitlines()}
    assert all(records[json.loads(line)["id"]] == line for line in kept), "the documents done before the timeout stand"


def test_a_per_type_price_is_per_gpu_and_a_single_price_per_machine(tmp_path: Path):
    from llmopt.reports.rows import Row, Source
    from llmopt.sweeps import experiment

    body = "name: x\nhardware: [A-1, B-2]\nprice_per_hour: {A-1: 2.0, B-2: 3.0}\n"
    body += "cells: [{strategy: lead}, {strategy: vllm, gpus: 2}]\n"
    typed = experiment.load(write_experiment(tmp_path, body))
    source = Source(tmp_path, typed)
    one = Row("lead@B-2", "lead", 1, {}, tmp_path / "lead@B-2", source, hardware_type="B-2")
    two = Row("vllm@A-1", "vllm", None, {}, tmp_path / "vllm@A-1", source, hardware_type="A-1")
    assert one.price_per_hour == 3.0 and two.price_per_hour == 4.0, "two GPUs held, two GPU-hours an hour"
    machine = experiment.load(write_experiment(tmp_path, "name: y\nprice_per_hour: 5\ncells:\n  - {strategy: vllm, gpus: 2}\n"))
    row = Row("vllm", "vllm", None, {}, tmp_path / "vllm", Source(tmp_path, machine))
    assert row.price_per_hour == 5.0, "a single price is the machine's"
