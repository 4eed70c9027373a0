"""Documents that cannot run are recorded as skipped with the reason, never dropped and never a crash."""

from __future__ import annotations

from pathlib import Path

from conftest import read_json, read_jsonl, run_cli, write_jsonl


def test_empty_whitespace_and_over_long_documents_are_skipped(tmp_path: Path):
    rows = [
        {"id": "fine", "document": "Boil water. Add pasta. Stir it.", "summary": "Boil pasta."},
        {"id": "empty", "document": "", "summary": "x"},
        {"id": "blank", "document": " \n\t ", "summary": "x"},
        {"url": "https://example.org/long", "document": "water " * 3000, "summary": "x"},  # tiny's context is 2048
    ]
    out = tmp_path / "run"
    dataset = write_jsonl(tmp_path / "docs.jsonl", rows)
    result = run_cli(
        "llmopt.run", "--strategy", "default", "--model", "tiny", "--dataset", dataset, "--max-new-tokens", "4", "--out", out
    )
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["status"] == "ok"
    assert (summary["n_completed"], summary["n_skipped"]) == (1, 3)
    reasons = {s["id"]: s["reason"] for s in summary["skipped"]}
    assert reasons["empty"] == reasons["blank"] == "empty document"
    assert "exceeds the model's context of 2048" in reasons["https://example.org/long"]
    assert [r["status"] for r in read_jsonl(out / "records.jsonl")] == ["ok", "skipped", "skipped", "skipped"]
