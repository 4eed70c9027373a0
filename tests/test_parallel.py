"""Sweeps with cells side by side on one machine (`--parallel N`, `--gpus`): the same rows as one cell at a time,
and no GPU ever given to two cells at once (read back from sweep_log.jsonl)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, assert_usage_error, cli_env, read_json, run_cli

from llmopt.sweeps.gpus import _nvml_names

FAULTS = ROOT / "tests" / "fault_strategies.py"
KEPT = ("status", "n_completed", "n_oom", "n_failed", "rouge1", "rouge2", "rougeL", "batch_size", "errors")


def sweep(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # One thread per cell in both sweeps: a different thread count could change a float sum's order and with it a
    # greedy token, which would be a difference of the arithmetic, not of the sweep.
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llmopt.sweep", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=900)  # fmt: skip


def rows(out: Path, cells: list[str]) -> dict[str, dict]:
    found = {}
    for cell in cells:
        state_file = out / cell / "summary.json"
        state = read_json(state_file if state_file.is_file() else out / cell / "sweep_cell.json")
        found[cell] = {k: state.get(k) for k in KEPT}
    return found


def test_parallel_sweep_gives_the_rows_of_a_serial_one(tmp_path: Path):
    spec = tmp_path / "exp.yaml"
    spec.write_text(f"""
name: side-by-side
model: tiny
dataset: sample
generation: {{max_new_tokens: 12, limit: 8}}
cells:
  - strategy: default
    batch_size: [1, 4]
  - strategy: lead
  - strategy: {FAULTS}:Broken
    name: crash
  - strategy: gptq
""")
    cells = ["default-b1", "default-b4", "lead", "crash", "gptq"]
    serial = sweep(spec, "--out", tmp_path / "serial")
    parallel = sweep(spec, "--out", tmp_path / "parallel", "--parallel", "2")
    assert serial.returncode == 0, serial.stderr
    assert parallel.returncode == 0, parallel.stderr
    one, two = rows(tmp_path / "serial", cells), rows(tmp_path / "parallel", cells)
    assert one == two
    assert [one[c]["status"] for c in cells] == ["ok", "ok", "ok", "failed", "unavailable"]
    assert "1 failed, 1 unavailable" in parallel.stdout
    entries = [json.loads(line) for line in (tmp_path / "parallel" / "sweep_log.jsonl").read_text().splitlines()]
    assert sorted(e["cell"] for e in entries) == sorted(cells)  # gptq's run started too, and said it cannot run here
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:  # each cell kept to its own share of the cores, and the shares of overlapping cells differ
        for a, b in itertools.combinations(entries, 2):
            if a["started"] < b["ended"] and b["started"] < a["ended"]:
                assert not set(a["cpus"]) & set(b["cpus"]), (a, b)
    report = (tmp_path / "parallel" / "report.md").read_text()
    assert "crash" in report and "gptq" in report


def _gpu_ids_for_the_test() -> tuple[str, list[str]]:
    """GPU ids a two-GPU sweep can use on this host: real ones where it has two, ids taken as given where it has
    none (CUDA_VISIBLE_DEVICES means nothing to a CPU run, and the sweep's bookkeeping is what is tested)."""
    names = _nvml_names() or []
    if len(names) == 1:
        pytest.skip("one GPU here: a two-GPU sweep cannot run (the refusal is tested below)")
    return "0,1", ["0", "1"]


def test_cells_never_share_a_gpu(tmp_path: Path):
    gpus, ids = _gpu_ids_for_the_test()
    spec = tmp_path / "exp.yaml"
    spec.write_text(f"""
name: on-gpus
model: tiny
dataset: sample
generation: {{max_new_tokens: 8, limit: 6}}
cells:
  - strategy: {FAULTS}:Slow
    name: slow
    batch_size: [1, 2, 3]
  - strategy: {FAULTS}:Slow
    name: two-gpus
    gpus: 2
  - strategy: lead
    name: three-gpus
    gpus: 3
""")
    result = sweep(spec, "--out", tmp_path / "out", "--gpus", gpus)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in (tmp_path / "out" / "sweep_log.jsonl").read_text().splitlines()]
    by_cell = {e["cell"]: e for e in entries}
    assert set(by_cell) == {"slow-b1", "slow-b2", "slow-b3", "two-gpus"}
    assert by_cell["two-gpus"]["gpus"] == ids
    assert all(len(by_cell[c]["gpus"]) == 1 for c in ("slow-b1", "slow-b2", "slow-b3"))
    overlapped = False
    for a, b in itertools.combinations(entries, 2):
        if a["started"] < b["ended"] and b["started"] < a["ended"]:
            overlapped = True
            assert not set(a["gpus"]) & set(b["gpus"]), (a, b)
    assert overlapped  # two one-GPU cells did run side by side
    unavailable = read_json(tmp_path / "out" / "three-gpus" / "sweep_cell.json")
    assert unavailable["status"] == "unavailable"
    assert "needs 3 GPUs" in unavailable["errors"][0]
    for cell in ("slow-b1", "two-gpus"):  # the run saw the GPUs it was given
        assert read_json(tmp_path / "out" / cell / "summary.json")["status"] == "ok"


def test_parallel_and_gpu_flags_are_checked(tmp_path: Path):
    spec = ROOT / "experiments" / "cpu-demo.yaml"
    out = tmp_path / "out"
    assert_usage_error(run_cli("llmopt.sweep", spec, "--out", out, "--parallel", "0"), "--parallel must be at least 1")
    assert_usage_error(run_cli("llmopt.sweep", spec, "--out", out, "--gpus", "0,,1"), "--gpus takes")
    assert_usage_error(run_cli("llmopt.sweep", spec, "--out", out, "--gpus", "0,0"), "names a GPU twice")
    ray = run_cli("llmopt.sweep", spec, "--out", out, "--executor", "ray", "--gpus", "0")
    assert_usage_error(ray, "--gpus and --parallel are for one machine")
    names = _nvml_names() or []
    if not names:
        assert_usage_error(run_cli("llmopt.sweep", spec, "--out", out, "--gpus", "all"), "no GPU here")
    else:
        missing = str(len(names))
        assert_usage_error(run_cli("llmopt.sweep", spec, "--out", out, "--gpus", missing), f"there is no GPU {missing}")
        result = run_cli("llmopt.sweep", spec, "--out", out, "--parallel", "2")
        assert_usage_error(result, "would let cells share them")
