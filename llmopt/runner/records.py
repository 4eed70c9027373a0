"""A run's folder as the runner writes it: the settings a resume checks, the records and events appended as work
finishes, the summary. Everything in the summary can be rebuilt from the records and events, so a resumed run
reports the whole run. The folder's format (file names, record fields, statuses, reading a run's state) is
llmopt/results.py, which the reports read through.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt import results
from llmopt.documents.datasets import Document
from llmopt.errors import UsageError
from llmopt.files import append_jsonl, read_jsonl, write_json_atomic
from llmopt.results import CONFIG, ENV, ERROR_LOG, EVENTS, RECORDS, SUMMARY
from llmopt.stopping import StopRequest


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = False

    def open(self, identity: dict[str, Any], resume: bool) -> None:
        """Create the folder for a new run, or check that `--resume` points at a run of the same settings."""
        config_path = self.path / CONFIG
        if resume:
            if not config_path.is_file():
                raise UsageError(f"--resume: {str(self.path)!r} holds no llmopt run (no {CONFIG})")
            try:
                previous = json.loads(config_path.read_text(encoding="utf-8"))["identity"]
            except (ValueError, KeyError, OSError) as exc:
                raise UsageError(f"--resume: cannot read {config_path}: {exc}") from None
            diffs = [
                f"{k}: {previous.get(k)!r} there, {identity.get(k)!r} now" for k in identity if previous.get(k) != identity.get(k)
            ]
            if diffs:
                raise UsageError(f"--resume: {str(self.path)!r} is a run with other settings ({'; '.join(diffs)})")
            return
        if config_path.exists() or (self.path / RECORDS).exists():
            raise UsageError(f"{str(self.path)!r} already holds a run: pass --resume to continue it, or another --out")
        try:
            self.created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(config_path, {"identity": identity})
        except OSError as exc:
            raise UsageError(f"cannot write the output folder {str(self.path)!r}: {exc.strerror or exc}") from None

    def discard(self) -> None:
        """Remove a folder this run created, when it fails before doing any work."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)

    def write_env(self, env: dict[str, Any]) -> None:
        write_json_atomic(self.path / ENV, env)

    def append_records(self, records: Iterable[dict[str, Any]]) -> None:
        append_jsonl(self.path / RECORDS, records)

    def append_event(self, event: dict[str, Any]) -> None:
        append_jsonl(self.path / EVENTS, [event])

    def records(self) -> dict[str, dict[str, Any]]:
        """The latest record of each document (a retried document's new record replaces the old one)."""
        return results.latest_records(self.path)

    def damaged_lines(self) -> int:
        """Lines of records.jsonl that a hard kill cut off; they are skipped, and dropped by sort_records."""
        return read_jsonl(self.path / RECORDS)[1]

    def events(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / EVENTS)[0]

    def sort_records(self) -> None:
        """Rewrite records.jsonl once per document, in dataset order (appends arrive in batch order)."""
        rows = sorted(self.records().values(), key=lambda r: r["index"])
        tmp = self.path / f".{RECORDS}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path / RECORDS)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.path / SUMMARY, summary)

    def write_error_log(self, text: str) -> None:
        (self.path / ERROR_LOG).write_text(text, encoding="utf-8")


@dataclass
class Item:
    """A document on its way through a run: its place in the dataset, its prompt and the prompt's length."""

    index: int
    doc: Document
    prompt: str | list[int]
    prompt_tokens: int = 0


class Recorder:
    """Turns outcomes into records and events, and appends them whole: a stop signal waits until a write is done."""

    def __init__(self, out: RunDir, stop: StopRequest) -> None:
        self.out = out
        self.stop = stop

    @staticmethod
    def record(item: Item, status: str, **fields: Any) -> dict[str, Any]:
        return results.record(item.index, item.doc.id, status, item.doc.summary, **fields)

    def append(self, records: list[dict[str, Any]]) -> None:
        with self.stop.shielded():
            self.out.append_records(records)
        self.honour_stop()

    def event(self, event: dict[str, Any]) -> None:
        with self.stop.shielded():
            self.out.append_event(event)
        self.honour_stop()

    def honour_stop(self) -> None:
        """A stop that arrived during a write (or that a library swallowed) takes effect here, at once."""
        if self.stop.requested:
            raise KeyboardInterrupt
