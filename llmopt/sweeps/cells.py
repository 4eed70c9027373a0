"""One cell of a sweep: `python -m llmopt.run` in a session of its own, watched, stopped whole, and its verdict.

A crash, an out-of-memory error or a CUDA context never leaks into the next cell. A cell past its timeout (or a
Ctrl-C) gets SIGTERM on its whole process group, so that the run writes its partial summary and vLLM's engine core
and workers stop with it; whatever is left after the grace period, and anything a finished run left behind, gets
SIGKILL. A cell that crashes or times out is a `failed` verdict with the last lines of its stderr; a strategy the
machine cannot run (exit code 69) is `unavailable` with its reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from llmopt.runner.records import RECORDS, SUMMARY, read_state, write_verdict
from llmopt.sweeps.experiment import Cell, Experiment

EXIT_UNAVAILABLE = 69  # what `llmopt run` exits with when its strategy cannot run on this machine
STDERR_TAIL_LINES = 12
FINISHED = {"ok", "oom"}  # a re-run skips these; it retries failed and unavailable cells
STOP_GRACE_S = 60.0  # how long a cell may take to write its partial summary after SIGTERM before it is killed


class ProgressDisplay(Protocol):
    """Where a cell's progress line goes (the command line's terminal or log)."""

    def update(self, text: str) -> None: ...

    def end(self, text: str | None = None) -> None: ...


def _tail(text: str) -> str:
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip() and "doc/s]" not in line]
    return "\n".join(lines[-STDERR_TAIL_LINES:])


class CellProgress:
    """Documents done and the cell's generation docs/s, read from its records.jsonl as the run appends to it.

    docs/s is completed documents over their generation time (the run's own `docs_per_sec`), not over the time
    since the cell started, which counts loading and warm-up and reads far too low.
    """

    def __init__(self, records: Path) -> None:
        self.records = records
        self._reset(None)

    def _reset(self, inode: int | None) -> None:
        self.inode = inode
        self.offset = 0
        self.done = 0
        self.completed = 0
        self.generate_s = 0.0

    def update(self) -> None:
        try:
            with open(self.records, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                if inode != self.inode:  # the run rewrote the file (sorted into dataset order): read it anew
                    self._reset(inode)
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return
        whole = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written is read next time
        self.offset += len(whole)
        for line in whole.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.done += 1
            if record.get("status") == "ok":
                self.completed += 1
                self.generate_s += record.get("generate_s") or 0.0

    @property
    def docs_per_sec(self) -> float | None:
        return self.completed / self.generate_s if self.generate_s > 0 else None

    def line(self, label: str, elapsed_s: float) -> str:
        rate = f", {self.docs_per_sec:.2f} docs/s generating" if self.docs_per_sec else ""
        return f"{label}: {self.done} docs done{rate}, {elapsed_s:.0f} s"


def stop_group(proc: subprocess.Popen[bytes], sig: int, grace_s: float) -> None:
    """Signal the cell's whole process group (the run and what it started: an engine core, workers), wait up to
    `grace_s` for the run to write its partial summary and exit, then kill whatever of the group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes], wait_s: float = 30.0) -> None:
    """SIGKILL to every process left in the cell's group, and wait until none is left: an engine process must not
    outlive its cell and hold the GPU memory the next cell needs."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + wait_s
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies, waiting to be reaped by init, hold nothing)."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():  # no procfs: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _die_with_the_sweep() -> None:
    """In the cell's process, before it runs: SIGTERM when the sweep dies, even by SIGKILL or a lost terminal, since
    a session of its own no longer gets the terminal's signals and only the sweep enforces the timeout."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_cell(cell: Cell, exp: Experiment, cell_dir: Path, resume: bool, label: str, show: ProgressDisplay) -> dict[str, Any]:
    """Run one cell to its end (or its timeout) and return what it ended as: its summary, or the sweep's verdict."""
    cmd = [sys.executable, "-m", "llmopt.run", *cell.run_args(exp), "--out", str(cell_dir)]
    if resume:
        cmd.append("--resume")
        # An earlier session's summary: this one writes its own, and a hard death must not pass the old one off.
        (cell_dir / SUMMARY).unlink(missing_ok=True)
    stderr_path = cell_dir.parent / f".{cell_dir.name}.stderr"
    started = time.monotonic()
    timed_out = False
    progress = CellProgress(cell_dir / RECORDS)
    with open(stderr_path, "w") as err:
        # A session of its own: the cell's processes form one group, stopped together, and a Ctrl-C at the terminal
        # reaches the sweep first, which stops the cell in order.
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                preexec_fn=_die_with_the_sweep)  # fmt: skip
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - started
                if elapsed > exp.timeout_s:
                    timed_out = True
                    stop_group(proc, signal.SIGTERM, STOP_GRACE_S)  # llmopt.run then writes a valid partial summary
                    break
                progress.update()
                show.update(progress.line(label, elapsed))
                time.sleep(0.5)
        except KeyboardInterrupt:
            show.end()
            stop_group(proc, signal.SIGINT, STOP_GRACE_S)
            raise
        finally:
            kill_group(proc)  # the run has ended (or the sweep is leaving): nothing it started may stay behind
    progress.update()
    show.end(progress.line(label, time.monotonic() - started))
    stderr_text = stderr_path.read_text(errors="replace")
    if cell_dir.is_dir():
        shutil.move(str(stderr_path), cell_dir / "stderr.log")
    else:
        stderr_path.unlink(missing_ok=True)
    state = read_state(cell_dir) if (cell_dir / SUMMARY).is_file() else None
    if state is not None and not timed_out:
        return state
    # No summary (a usage error, a strategy this machine cannot run, a hard crash) or a timeout: the sweep says why.
    unavailable = proc.returncode == EXIT_UNAVAILABLE and not timed_out
    if timed_out:
        error = f"timed out after {exp.timeout_s} s"
    elif unavailable:
        error = _reason(stderr_text)
    else:
        error = f"exit code {proc.returncode}"
    row = {
        "strategy": cell.strategy,
        "model": cell.model,
        "batch_size": cell.batch_size,
        "status": "unavailable" if unavailable else "failed",
        "errors": [error],
        # A timed-out cell is resumed by the next sweep (its finished documents are kept), not started again.
        "timed_out": timed_out,
        "stderr_tail": "" if unavailable else _tail(stderr_text),
        "returncode": proc.returncode,
        "partial_summary": state,
    }
    write_verdict(cell_dir, row)
    return row


def _reason(stderr_text: str) -> str:
    """The one line a run prints when its strategy cannot run here, without the program's name."""
    lines = [line for line in stderr_text.splitlines() if "error:" in line]
    return lines[-1].split("error:", 1)[1].strip() if lines else "cannot run on this machine"
