"""The prepared GPU check (scripts/gpu_check.sh) end to end on this CPU with the tiny model, so that it cannot rot
before a GPU is lent: its plan (it fits its one device call), its steps and rows (a cell that cannot run here is a row,
not the end), the files that come back from a device machine, and what a kill part way leaves there."""

from __future__ import annotations

import csv
import importlib.util
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import ROOT, cli_env, read_json

MAX_FILES, MAX_FILE_BYTES = 8, 16 << 20
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def command(tmp_path: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {**cli_env(), "MODEL": "tiny", "PYTHON": sys.executable}  # the suite's Python, with llmopt's packages
    cmd = [str(SCRIPT), str(tmp_path / "out"), "--cpu", "--results", str(tmp_path / "results"), "--name", "gpu-check-test",
           *args]  # fmt: skip
    return cmd, env


def gpu_check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    cmd, env = command(tmp_path, *args)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, tmp_path / "out"


def unpack(out: Path, tmp_path: Path) -> Path:
    files = sorted(p for p in out.iterdir())
    assert len(files) <= MAX_FILES and all(p.is_file() and p.stat().st_size <= MAX_FILE_BYTES for p in files), files
    assert {p.name for p in files} >= {"gpu-check-test.tar.gz", "gpu-check.log", "check.md", "steps.json"}
    with tarfile.open(out / "gpu-check-test.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    return tmp_path / "unpacked" / "gpu-check-test"


def test_the_plan_fits_one_device_call_with_the_studys_cells_first(tmp_path: Path):
    """--dry-run prints the plan and runs nothing: each step's share (its estimate plus the margin no GPU has taken
    away yet), the study's cells first, the tests in the time left, the total within the budget; every `gpu` test of
    the suite is in the check's list or left out with a reason."""
    module = check_module()
    result = subprocess.run([str(SCRIPT), "--dry-run", "--results", str(tmp_path / "results")], capture_output=True,
                            text=True, env={**cli_env(), "PYTHON": sys.executable}, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "results").exists(), "a dry run makes nothing"
    text = result.stdout
    assert "of 540 s: fits" in text and "20% on an estimate" in text
    steps = [line.split()[1:3] for line in text.splitlines() if line[:2].strip().isdigit()]
    cells = [name for kind, name in steps if kind == "cell"]
    study = [c.name for c in module.TRANSFORMERS_TIER if c.study]
    assert cells[: len(study)] == study == ["default-b1", "4bit-bauto", "8bit-bauto"]
    assert "sdpa-bauto" not in cells and "cell sdpa-bauto: the same run as default-bauto" in text
    assert steps[0][0] == "install" and steps[-2][0] == "pytest" and steps[-1][0] == "report,"

    args = type("Args", (), {"cpu": False, "run_tests": True, "cells": None, "budget_s": 540, "vllm": False,
                             "tests": [t.node for t in module.GPU_TESTS]})()  # fmt: skip
    plan = module.make_plan(args, module.TRANSFORMERS_TIER, None)
    assert plan.fits and plan.tests_share_s >= module.PYTEST_FLOOR_S
    margins = [step.margin_s / step.expected_s for step in [plan.install, *plan.cells]]
    assert all(abs(m - module.MARGIN["estimate"]) < 1e-9 for m in margins)
    assert plan.fixed_s + plan.tests_share_s <= 540
    # once a GPU check has run, its own timings replace the estimates (a smaller margin)
    measured = module.Measured("measured on NVIDIA H100 80GB HBM3, 2026-12-06", {"cell compile": 40.0}, {})
    compile_step = next(c for c in module.make_plan(args, module.TRANSFORMERS_TIER, measured).cells if c.name == "cell compile")
    assert compile_step.expected_s == 40.0 and compile_step.margin_s == 4.0 and compile_step.source.startswith("measured")

    marked = set(module.gpu_marked_tests())
    listed = {t.node for t in module.GPU_TESTS}
    assert marked == listed | set(module.LEFT_OUT_TESTS), "place each `gpu` test in GPU_TESTS or LEFT_OUT_TESTS"
    assert not listed & set(module.LEFT_OUT_TESTS)


def test_gpu_check_runs_every_step_on_the_cpu(tmp_path: Path):
    from llmopt import strategies

    cells = ["default-b1", "vllm-fp8", "torchao-int8-bauto"]
    # one GPU test, so that a CUDA host does not run them all twice
    gpu_test = "tests/test_gpu.py::test_llamacpp_offloads_every_layer"
    result, out = gpu_check(tmp_path, "--cells", " ".join(cells), "--roofline-gpu", "H200-SXM", "--budget-s", "900",
                            "--tests", gpu_test)  # fmt: skip
    folder = unpack(out, tmp_path)
    log = (out / "gpu-check.log").read_text()
    # the cells first, then pytest -m gpu (without a GPU its test is skipped, and says why)
    assert log.index("cell torchao-int8-bauto:") < log.index("pytest -m gpu:")
    assert "pytest -m gpu: exit code 0" in log and (folder / "pytest-gpu.xml").is_file()
    if strategies.cuda_capability() is None:
        assert "needs a CUDA GPU" in (folder / "pytest-gpu.log").read_text()
    for name in ("default-b1", "torchao-int8-bauto"):
        summary = read_json(folder / name / "summary.json")
        assert summary["status"] == "ok" and summary["n_completed"] == 2, (name, summary["status"], summary["errors"])
        assert summary["output_tokens_mean"] == 4 and summary["weights"] == "random" and summary["model"] == "tiny"
        roof = read_json(folder / "roofline" / f"{name}.json")
        assert roof["gpu"].startswith("H200") and roof["decode_floor_ms_per_token"] > 0
        assert roof["batch_size"] == summary["batch_size"] and roof["strategy"] == summary["strategy"]
        # the run's own summary lines, kept by the sweep, are in the log too
        assert "documents        2 of 2 done" in (folder / name / "stdout.log").read_text()
    assert log.count("documents        2 of 2 done") == 2
    assert read_json(folder / "torchao-int8-bauto" / "summary.json")["batch_size"] == 2, "auto: every document fits"
    # FP8 needs Ada or Hopper: elsewhere an `unavailable` row, and the cells after it still ran
    rows = {r["cell"]: r for r in csv.DictReader((folder / "check.csv").read_text().splitlines())}
    assert list(rows) == cells
    if strategies.availability(strategies.resolve("vllm-fp8")).ready:
        assert rows["vllm-fp8"]["status"] == "ok"
    else:
        assert rows["vllm-fp8"]["status"] == "unavailable" and "compute capability" in rows["vllm-fp8"]["note"]
    assert all(rows[n]["status"] == "ok" and float(rows[n]["floor_ms_per_step"]) > 0 for n in cells if n != "vllm-fp8")
    assert rows["default-b1"]["attention"] == read_json(folder / "default-b1" / "summary.json")["engine"]["attn_implementation"]
    # every step with its time, in a file the next plan reads
    steps = read_json(out / "steps.json")
    assert [s["name"] for s in steps["steps"] if not s["name"].startswith("roofline")] == [
        "cell default-b1", "cell vllm-fp8", "cell torchao-int8-bauto", "pytest -m gpu", "report"]  # fmt: skip
    assert steps["device"] is None and steps["tests"] == {gpu_test: steps["tests"][gpu_test]}
    # the report of the results folder, and copies of it beside the archive
    assert (out / "report.md").read_text() == (folder / "report.md").read_text()
    assert "torchao-int8-bauto" in (out / "summary.csv").read_text()
    assert f"| vllm-fp8 | {rows['vllm-fp8']['status']} |" in (out / "check.md").read_text()
    assert "Traceback" not in result.stdout + result.stderr


def test_a_spent_budget_leaves_rows_not_a_stop(tmp_path: Path):
    """With its time spent, the check still writes every cell's row ("not run") and packs what it has."""
    _, out = gpu_check(tmp_path, "--budget-s", "1", "--no-tests", "--cells", "default-b1 torchao-int8-bauto")
    folder = unpack(out, tmp_path)
    rows = list(csv.DictReader((folder / "check.csv").read_text().splitlines()))
    assert [(r["cell"], r["status"]) for r in rows] == [("default-b1", "not run"), ("torchao-int8-bauto", "not run")]
    assert "not run: 0 s left, about 40 s needed" in (out / "check.md").read_text()


def test_a_check_stopped_part_way_has_written_its_finished_cells(tmp_path: Path):
    """check.md, check.csv, steps.json and the log in the output folder are written after every cell, so a check
    killed later leaves them; stopped with SIGTERM it also stops the running cell and packs what it has. (The first
    cell is one a CPU cannot run: a finished row in seconds.)"""
    cmd, env = command(tmp_path, "--no-tests", "--cells", "vllm-fp8 default-b1", "--budget-s", "900")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = tmp_path / "out"
    deadline = time.monotonic() + 600
    try:
        while "cell default-b1: -m llmopt.sweep" not in read_text(out / "gpu-check.log"):
            assert proc.poll() is None and time.monotonic() < deadline, (proc.returncode, read_text(out / "gpu-check.log"))
            time.sleep(0.2)
        # while the second cell runs, the first one's row and step are there
        table = read_text(out / "check.md")
        assert "| vllm-fp8 | pending |" not in table and "| vllm-fp8 | " in table, table
        assert "| default-b1 | pending |" in table
        assert read_json(out / "steps.json")["steps"][0]["name"] == "cell vllm-fp8"
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    folder = unpack(out, tmp_path)
    rows = {r["cell"]: r["status"] for r in csv.DictReader((folder / "check.csv").read_text().splitlines())}
    assert rows["vllm-fp8"] in ("ok", "unavailable") and rows["default-b1"] != "ok", rows
    assert "| cell default-b1 |" in (out / "check.md").read_text() and "stopped with the check" in output
    assert "Traceback" not in output


def test_pytest_stopped_at_its_share_leaves_its_junit_file_and_log(tmp_path: Path):
    """pytest gets SIGINT at the end of its share: it ends the running test and still writes its JUnit file and
    summary, with the tests that finished."""
    tests = tmp_path / "gpu_tests" / "test_slow.py"
    tests.parent.mkdir()
    tests.write_text(
        "import subprocess, sys\n\nimport pytest\n\n\n@pytest.mark.gpu\ndef test_quick():\n    pass\n\n\n"
        "@pytest.mark.gpu\ndef test_slow():\n    subprocess.run([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    )
    started = time.monotonic()
    _, out = gpu_check(tmp_path, "--cells", "", "--tests", str(tests), "--pytest-max-s", str(12 + 15))
    assert time.monotonic() - started < 200
    folder = unpack(out, tmp_path)
    cases = [c.get("name") for c in ET.parse(folder / "pytest-gpu.xml").getroot().iter("testcase")]
    assert "test_quick" in cases and "test_slow" not in cases
    log = (folder / "pytest-gpu.log").read_text()
    assert "test_quick PASSED" in log and "KeyboardInterrupt" in log and "1 passed" in log
    step = next(s for s in read_json(out / "steps.json")["steps"] if s["name"] == "pytest -m gpu")
    assert step["timed_out"] and step["note"].startswith("stopped at its time limit")
    assert [node.split("::")[-1] for node in read_json(out / "steps.json")["tests"]] == ["test_quick"]


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
