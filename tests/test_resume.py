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
