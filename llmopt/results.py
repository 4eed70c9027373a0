"""A run's folder: config.json, env.json, records.jsonl and events.jsonl appended as work finishes, summary.json.

Everything in the summary can be rebuilt from the records and events, so a resumed run reports the whole run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError

CONFIG, ENV, RECORDS, EVENTS, SUMMARY = "config.json", "env.json", "records.jsonl", "events.jsonl", "summary.json"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The whole lines of an appended JSONL file, and how many lines were damaged.

    A hard kill in the middle of a write leaves a cut-off line; a later append may even be glued to it. Such a
    line is skipped, never the lines after it: they were written whole by later appends.
    """
    if not path.is_file():
        return [], 0
    rows, damaged = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            damaged += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            damaged += 1
    return rows, damaged


def _ends_cut_off(path: Path) -> bool:
    """Whether the file's last line lacks its newline: the trace of a write that a hard kill interrupted."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


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

    def _append(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if not text:
            return
        path = self.path / name
        if _ends_cut_off(path):
            text = "\n" + text  # end the cut-off line, so that this append starts a line of its own
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def append_records(self, records: Iterable[dict[str, Any]]) -> None:
        self._append(RECORDS, records)

    def append_event(self, event: dict[str, Any]) -> None:
        self._append(EVENTS, [event])

    def records(self) -> dict[str, dict[str, Any]]:
        """The latest record of each document (a retried document's new record replaces the old one)."""
        rows, _ = read_jsonl(self.path / RECORDS)
        return {r["id"]: r for r in rows if "id" in r}

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
