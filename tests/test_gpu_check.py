"""The prepared GPU check (scripts/gpu_check.sh) end to end on this CPU with the tiny model, so that it cannot rot
before a GPU is lent: its steps, its rows (a cell that cannot run here is a row, not the end), and the few files
that come back from a device machine."""

from __future__ import annotations

import csv
import subprocess
import sys
import tarfile
from pathlib import Path

from conftest import ROOT, cli_env, read_json

MAX_FILES, MAX_FILE_BYTES = 8, 16 << 20


def gpu_check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out"
    env = {**cli_env(), "MODEL": "tiny", "PYTHON": sys.executable}  # the suite's Python, with llmopt's packages
    result = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--cpu", "--results", str(tmp_path / "results"),
         "--name", "gpu-check-test", *args],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, out


def unpack(out: Path, tmp_path: Path) -> Path:
    files = sorted(p for p in out.iterdir())
    assert len(files) <= MAX_FILES and all(p.is_file() and p.stat().st_size <= MAX_FILE_BYTES for p in files), files
    assert {p.name for p in files} >= {"gpu-check-test.tar.gz", "gpu-check.log", "check.md"}
    with tarfile.open(out / "gpu-check-test.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    return tmp_path / "unpacked" / "gpu-check-test"


def test_gpu_check_runs_every_step_on_the_cpu(tmp_path: Path):
    from llmopt import strategies

    cells = ["default-b1", "vllm-fp8", "torchao-int8-bauto"]
    # one GPU test, so that a CUDA host does not run them all twice
    gpu_test = "tests/test_gpu.py::test_llamacpp_offloads_every_layer"
    result, out = gpu_check(tmp_path, "--cells", " ".join(cells), "--roofline-gpu", "H200-SXM", "--budget-s", "900",
                            "--tests", gpu_test)  # fmt: skip
    folder = unpack(out, tmp_path)
    log = (out / "gpu-check.log").read_text()
    # pytest -m gpu ran (without a GPU its test is skipped, and says why)
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
    assert read_json(folder / "torchao-int8-bauto" / "summary.json")["batch_size"] == 2, "auto: every document fits"
    # FP8 needs Ada or Hopper: elsewhere an `unavailable` row, and the cells after it still ran
    rows = {r["cell"]: r for r in csv.DictReader((folder / "check.csv").read_text().splitlines())}
    assert list(rows) == cells
    if strategies.availability(strategies.resolve("vllm-fp8")).ready:
        assert rows["vllm-fp8"]["status"] == "ok"
    else:
        assert rows["vllm-fp8"]["status"] == "unavailable" and "compute capability" in rows["vllm-fp8"]["note"]
    assert all(rows[n]["status"] == "ok" and float(rows[n]["floor_ms_per_step"]) > 0 for n in cells if n != "vllm-fp8")
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
    assert "not run: the check's time was spent" in (out / "check.md").read_text()
