"""The study's OOM table, produced by the tool: record, halve, retry, and go on."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT, read_json, read_jsonl, run_cli, write_jsonl

FAULTS = ROOT / "tests" / "fault_strategies.py"


def docs_with_one_that_never_fits(tmp_path: Path) -> Path:
    rows = [{"id": f"d{i}", "document": f"Short document number {i}. It has two sentences.", "summary": "s"} for i in range(9)]
    # The longest document comes first in length order, so it lands in the first batch of eight.
    rows.insert(4, {"id": "huge", "document": "OOM-ALWAYS " + "word " * 200, "summary": "s"})
    return write_jsonl(tmp_path / "docs.jsonl", rows)


def test_cuda_oom_backs_off_to_one_and_records_the_document(tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli(
        "llmopt.run", "--strategy", f"{FAULTS}:CudaOomAboveTwo", "--dataset", docs_with_one_that_never_fits(tmp_path),
        "--batch-size", "8", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["status"] == "oom"
    assert (summary["n_docs"], summary["n_completed"], summary["n_oom"], summary["n_failed"]) == (10, 9, 1, 0)
    events = [(e["batch_size"], "huge" in e["doc_ids"]) for e in summary["oom_events"]]
    # 8 fails; its halves of 4 fail; the half with the huge document fails at 2 and at 1; the other 4 splits into 2s.
    assert events == [(8, True), (4, True), (2, True), (1, True), (4, False)]
    records = {r["id"]: r for r in read_jsonl(out / "records.jsonl")}
    assert records["huge"]["status"] == "oom" and records["huge"]["reason"] == "OutOfMemoryError"
    assert all(r["status"] == "ok" and r["batch_size"] <= 2 for k, r in records.items() if k != "huge")
    assert "OOM" in result.stdout, "the result table shows the OOM events"


def test_cpu_allocator_failure_counts_as_oom(tmp_path: Path):
    out = tmp_path / "run"
    rows = [{"id": f"d{i}", "document": f"Document {i}. Second sentence.", "summary": "s"} for i in range(5)]
    dataset = write_jsonl(tmp_path / "docs.jsonl", rows)
    result = run_cli(
        "llmopt.run", "--strategy", f"{FAULTS}:CpuOomAboveTwo", "--dataset", dataset, "--batch-size", "5", "--out", out
    )
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["status"] == "ok" and summary["n_completed"] == 5
    assert [e["batch_size"] for e in summary["oom_events"]] == [5, 3]


def test_a_strategy_that_always_fails_stops_after_three_batches(tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli("llmopt.run", "--strategy", f"{FAULTS}:Broken", "--dataset", "sample", "--no-warmup", "--out", out)
    assert result.returncode == 1
    summary = read_json(out / "summary.json")
    assert summary["status"] == "failed"
    assert summary["n_failed"] == 3 and summary["n_completed"] == 0  # stopped after three failed batches
    assert summary["errors"] == ["ValueError: kernel exploded"]
    assert "Traceback" not in result.stderr


def test_a_crash_before_the_first_batch_is_a_failed_run_with_its_error(tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli("llmopt.run", "--strategy", f"{FAULTS}:Broken", "--dataset", "sample", "--out", out)
    assert result.returncode == 1
    summary = read_json(out / "summary.json")
    assert summary["status"] == "failed" and summary["n_completed"] == 0
    assert summary["errors"] == ["ValueError: kernel exploded"]
    assert "kernel exploded" in (out / "error.log").read_text(), "the traceback is kept for the developer"
    assert "Traceback" not in result.stderr


def test_retries_run_after_the_failed_batch_is_freed(tmp_path: Path):
    """A batch that ran out of memory holds its KV cache until its traceback is gone; the halves must not pay for it.

    KvCacheUnderBudget allocates real tensors against a budget: a batch of 2 fits only once the failed batch of 4
    has been freed. Retried from inside the except block, every retry ran out of memory and all four were `oom`.
    """
    rows = [{"id": f"d{i}", "document": f"Document {i}. It is short.", "summary": "s"} for i in range(4)]
    out = tmp_path / "run"
    result = run_cli(
        "llmopt.run", "--strategy", f"{FAULTS}:KvCacheUnderBudget", "--dataset", write_jsonl(tmp_path / "d.jsonl", rows),
        "--batch-size", "4", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert (summary["status"], summary["n_completed"], summary["n_oom"]) == ("ok", 4, 0)
    assert [e["batch_size"] for e in summary["oom_events"]] == [4]
    assert {r["batch_size"] for r in read_jsonl(out / "records.jsonl")} == {2}


def test_a_model_that_does_not_fit_at_load_is_an_oom_run(tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli("llmopt.run", "--strategy", f"{FAULTS}:OomAtLoad", "--dataset", "sample", "--limit", "5", "--out", out)
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert (summary["status"], summary["n_oom"], summary["n_completed"], summary["n_failed"]) == ("oom", 5, 0, 0)
    assert summary["oom_at_load"].startswith("OutOfMemoryError while loading the model: CUDA out of memory")
    assert summary["oom_events"] == [
        {"batch_size": None, "doc_ids": [r["id"] for r in read_jsonl(out / "records.jsonl")], "stage": "load"}
    ]
    assert summary["docs_per_sec"] is None and summary["load_s"] is not None
    assert not (out / "error.log").exists(), "not a crash"
    # A finished verdict: resuming does not try to load the model again.
    again = run_cli("llmopt.run", "--strategy", f"{FAULTS}:OomAtLoad", "--dataset", "sample", "--limit", "5", "--out", out,
                    "--resume")  # fmt: skip
    assert again.returncode == 0 and read_json(out / "summary.json")["status"] == "oom"
