"""Finished work is never lost: records are flushed per batch, Ctrl-C leaves a valid summary, --resume finishes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, cli_env, read_json, read_jsonl, run_cli

ARGS = ["--strategy", "default", "--model", "tiny", "--dataset", "sample", "--max-new-tokens", "48", "--ignore-eos"]


def start_and_stop_part_way(out: Path, sig: signal.Signals, after_records: int = 3) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmopt.run", *ARGS, "--out", str(out)],
        cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    records = out / "records.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) >= after_records:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    return proc.returncode


def test_ctrl_c_leaves_a_valid_partial_result_and_resume_completes_it(tmp_path: Path):
    out = tmp_path / "run"
    assert start_and_stop_part_way(out, signal.SIGINT) == 130
    partial = read_json(out / "summary.json")
    assert partial["status"] == "partial"
    assert 3 <= partial["n_completed"] < partial["n_docs"] == 22
    before = {r["id"]: r for r in read_jsonl(out / "records.jsonl")}

    result = run_cli("llmopt.run", *ARGS, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["status"] == "ok" and summary["n_completed"] == 22
    records = read_jsonl(out / "records.jsonl")
    assert [r["index"] for r in records] == list(range(22)), "one record per document, in dataset order"
    for r in records:
        if r["id"] in before:  # finished work was kept, not redone
            assert r == before[r["id"]]
    # The summary covers both sessions: generation time is the sum over all documents.
    assert summary["generate_s"] == sum(r["generate_s"] for r in records)
    assert len([e for e in read_jsonl(out / "events.jsonl") if e["event"] == "session"]) == 2

    # Resuming a finished run loads nothing and keeps the figures of the last session that did.
    again = run_cli("llmopt.run", *ARGS, "--out", out, "--resume")
    assert again.returncode == 0, again.stderr
    final = read_json(out / "summary.json")
    assert final["load_s"] == summary["load_s"] is not None and final["dtype"] == summary["dtype"] is not None
    assert final["generate_s"] == summary["generate_s"] and final["status"] == "ok"


def test_hard_kill_loses_only_the_batch_in_flight(tmp_path: Path):
    out = tmp_path / "run"
    start_and_stop_part_way(out, signal.SIGKILL)
    assert not (out / "summary.json").exists()
    kept = len(read_jsonl(out / "records.jsonl"))
    assert kept >= 3
    result = run_cli("llmopt.run", *ARGS, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert read_json(out / "summary.json")["n_completed"] == 22


def test_resume_of_a_finished_run_does_no_work_and_limit_may_grow(tmp_path: Path):
    out = tmp_path / "run"
    assert run_cli("llmopt.run", "--strategy", "lead", "--dataset", "sample", "--limit", "4", "--out", out).returncode == 0
    again = run_cli("llmopt.run", "--strategy", "lead", "--dataset", "sample", "--limit", "4", "--out", out, "--resume")
    assert again.returncode == 0 and read_json(out / "summary.json")["n_completed"] == 4
    more = run_cli("llmopt.run", "--strategy", "lead", "--dataset", "sample", "--limit", "8", "--out", out, "--resume")
    assert more.returncode == 0 and read_json(out / "summary.json")["n_completed"] == 8


def test_ctrl_c_stops_the_run_even_when_a_library_swallows_the_interrupt(tmp_path: Path):
    out = tmp_path / "run"
    strategy = f"{ROOT / 'tests' / 'fault_strategies.py'}:SwallowsInterrupt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmopt.run", "--strategy", strategy, "--dataset", "sample", "--out", str(out)],
        cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    records = out / "records.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (records.exists() and len(records.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    summary = read_json(out / "summary.json")
    assert summary["status"] == "partial" and summary["n_completed"] < 22


def test_a_line_cut_off_by_a_hard_kill_loses_nothing_after_it(tmp_path: Path):
    """kill -9 in the middle of a write leaves a line without its end; the next append must not be glued to it,
    and one --resume finishes the run."""
    out = tmp_path / "run"
    lead = ["--strategy", "lead", "--dataset", "sample", "--out", out]
    assert run_cli("llmopt.run", *lead, "--limit", "4").returncode == 0
    (out / "summary.json").unlink()
    with open(out / "records.jsonl", "a") as f:
        f.write('{"index": 4, "id": "cut-off", "status": "o')  # what a killed write leaves behind
    result = run_cli("llmopt.run", *lead, "--limit", "10", "--resume")
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert (summary["status"], summary["n_completed"]) == ("ok", 10)
    records = read_jsonl(out / "records.jsonl")
    assert [r["index"] for r in records] == list(range(10)), "the damaged line is dropped, every record kept"
    sessions = [e for e in read_jsonl(out / "events.jsonl") if e["event"] == "session"]
    assert sessions[-1]["damaged_record_lines"] == 1


def test_a_damaged_line_in_the_middle_keeps_the_lines_after_it(tmp_path: Path):
    from llmopt.runner.records import RunDir

    run = RunDir(tmp_path)
    (tmp_path / "records.jsonl").write_text('{"id": "a", "index": 0}\n{"id": "b", "ind\n{"id": "c", "index": 2}\n')
    assert list(run.records()) == ["a", "c"] and run.damaged_lines() == 1
    run.append_records([{"id": "d", "index": 3}])
    assert list(run.records()) == ["a", "c", "d"]


def test_a_run_left_partial_does_not_exit_0(tmp_path: Path):
    rows = [{"id": f"d{i}", "document": ("FAIL-ME " if i == 2 else "") + f"Doc {i}. Text.", "summary": "s"} for i in range(5)]
    dataset = tmp_path / "docs.jsonl"
    dataset.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    faults = f"{ROOT / 'tests' / 'fault_strategies.py'}:FailsMarkedDocuments"
    result = run_cli("llmopt.run", "--strategy", faults, "--dataset", dataset, "--out", out)
    summary = read_json(out / "summary.json")
    assert (summary["status"], summary["n_completed"], summary["n_failed"]) == ("partial", 4, 1)
    assert result.returncode == 3, "partial: documents are left to do"


def test_the_summary_is_written_before_a_slow_close(tmp_path: Path):
    """A slow engine shutdown must not cost the summary: a sweep kills a cell 60 s after SIGTERM."""
    out = tmp_path / "run"
    strategy = f"{ROOT / 'tests' / 'fault_strategies.py'}:SlowToClose"
    cmd = [sys.executable, "-m", "llmopt.run", "--strategy", strategy, "--dataset", "sample", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out / "summary.json").is_file():
            time.sleep(0.1)
        assert proc.poll() is None, "still closing"
        assert read_json(out / "summary.json")["status"] == "ok"
    finally:
        proc.kill()
        proc.wait()


def test_vllm_that_does_not_fit_at_start_is_an_oom_run(tmp_path: Path):
    """The engine's own "does not fit" at start-up (here: a KV cache share of memory too small for anything) is an
    `oom` row, like a transformers model too large for the GPU, not a crash."""
    import pytest

    pytest.importorskip("vllm")
    out = tmp_path / "run"
    result = run_cli(
        "llmopt.run", "--strategy", "vllm", "--model", "tiny", "--dataset", "sample", "--limit", "3", "--enforce-eager",
        "--gpu-memory-utilization", "0.0001", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["status"] == "oom" and summary["n_oom"] == 3 and summary["oom_at_load"].startswith("EngineOutOfMemory")
