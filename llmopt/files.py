"""Files written so that a crash never leaves half of one, and read back with one-line errors.

JSON is written to a temporary file and renamed over the old one. JSONL is appended and flushed line by line, and
read back skipping a line that a hard kill cut off, never the lines after it. A file the user named is read with a
usage error that says what is wrong with it. A cached folder is built aside and renamed into place, once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError


def build_once(target: Path, marker: str, build: Callable[[Path], object]) -> Path:
    """Folder `target`, made by `build(staging folder)` unless its `marker` file is there. One process builds it (a
    lock file beside it), the others wait for it; a crash part way leaves the staging folder gone and no half folder."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / marker).is_file():
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
            try:
                build(staging)
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


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


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append whole lines and flush them to disk; a line a hard kill cut off is ended first."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if not text:
        return
    if _ends_cut_off(path):
        text = "\n" + text  # end the cut-off line, so that this append starts a line of its own
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_user_file(path: Path, what: str) -> str:
    """The text of a file the user named, or a usage error saying what is wrong with it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {str(path)!r}: {exc}") from None
