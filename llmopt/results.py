"""The result folder's format: the names of its files, the fields every record starts with, the statuses a record, a
run and a sweep's verdict can have, and how to read back what a run ended as.

The runner and the sweeps write through this module and the reports read through it, so reading results never
depends on the code that produces them. It lives beside files.py and paths.py, below every folder of the package:
any layer may import it, and it imports none of them.

A run's folder: config.json (the settings a resume must share), env.json, records.jsonl and events.jsonl appended as
work finishes, summary.json. A sweep adds its own verdict (sweep_cell.json) where a run left no summary (a usage
error, a crash, a timeout, a strategy this machine cannot run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmopt.files import read_jsonl, write_json_atomic

CONFIG, ENV, RECORDS, EVENTS, SUMMARY = "config.json", "env.json", "records.jsonl", "events.jsonl", "summary.json"
ERROR_LOG = "error.log"  # the traceback of a run that crashed
VERDICT = "sweep_cell.json"  # what a sweep knows of a cell whose run left no summary (usage error, crash, timeout)
# A tune folder (llmopt tune): one line per trial as it ends, and what the search concluded, rewritten as it goes.
TUNE_HISTORY, TUNE_SUMMARY = "history.jsonl", "tune.json"

# Statuses: a record's is ok, oom, skipped or failed; a run's (summary.json) ok, oom, partial or failed; a sweep's
# verdict on a cell whose run left no summary failed or unavailable.
NOT_RUN = "not run"  # a cell with neither summary nor verdict
FINISHED = frozenset({"ok", "oom"})  # a run that needs no more work: every document has its final record
PRODUCED = frozenset({"ok", "oom", "partial"})  # a run that produced summaries, so it can compete on speed and quality


def record(index: int, doc_id: str, status: str, reference: str, **fields: Any) -> dict[str, Any]:
    """One line of records.jsonl: the document's place in the dataset, its id, its status and the reference summary,
    then what the run learned of it (prediction, token counts, ROUGE, the reason it was skipped...)."""
    return {"index": index, "id": doc_id, "status": status, "reference": reference, **fields}


def is_run(folder: Path) -> bool:
    """A folder that holds a run as it ended: its summary, or a sweep's verdict on it."""
    return (folder / SUMMARY).is_file() or (folder / VERDICT).is_file()


def read_state(folder: Path) -> dict[str, Any] | None:
    """What a run folder ended as: the sweep's verdict where it wrote one (crash, timeout, unavailable), else the
    run's summary, else None (not run yet)."""
    for name in (VERDICT, SUMMARY):
        path = folder / name
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError:
                return None
    return None


def state_or_not_run(folder: Path) -> dict[str, Any]:
    """read_state, with a cell that has not run (yet) as a state of its own."""
    return read_state(folder) or {"status": NOT_RUN, "errors": []}


def write_verdict(folder: Path, row: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / VERDICT, row)


def latest_records(folder: Path) -> dict[str, dict[str, Any]]:
    """The latest record of each document (a retried document's new record replaces the old one); a line a hard
    kill cut off is skipped."""
    rows, _ = read_jsonl(folder / RECORDS)
    return {r["id"]: r for r in rows if "id" in r}


def completed_records(folder: Path) -> dict[str, dict[str, Any]]:
    """The run's completed documents by id: predictions and per-document ROUGE, for paired comparisons."""
    return {r["id"]: r for r in read_jsonl(folder / RECORDS)[0] if r.get("status") == "ok"}
