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

from llmopt.results import RECORDS, SUMMARY, read_state, write_verdict
from llmopt.sweeps.experiment import Cell, Experiment

EXIT_UNAVAILABLE = 69  # what `llmopt run` exits with when its strategy cannot run on this machine
STDERR_TAIL_LINES = 12
STOP_GRACE_S = 60.0  # how long a cell may take to write its partial summary after SIGTERM before it is killed
POLL_S = 0.5


class ProgressBoard(Protocol):
    """Where the progress of the running cells goes (the command line's terminal or log), one line per cell."""

    def update(self, key: str, text: str) -> None: ...

    def end(self, key: str, text: str | None = None) -> None: ...


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


def _set_parent_death_signal() -> None:
    """SIGTERM when the sweep dies, even by SIGKILL or a lost terminal: a session of its own no longer gets the
    terminal's signals, and only the sweep enforces the timeout."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class CellRun:
    """One cell's `llmopt run`, started and then watched by whoever runs the sweep, one cell at a time or several
    side by side: `poll` never blocks, a timed-out cell is asked to stop and killed after the grace period."""

    def __init__(self, cell: Cell, exp: Experiment, cell_dir: Path, label: str, board: ProgressBoard,
                 env: dict[str, str] | None = None, cpus: list[int] | None = None) -> None:  # fmt: skip
        self.cell, self.exp, self.cell_dir, self.label, self.board = cell, exp, cell_dir, label, board
        self.env = env or {}
        self.cpus = cpus  # the cores the cell may use, where cells run side by side
        self.progress = CellProgress(cell_dir / RECORDS)
        self.timed_out = False
        self.stop_by: float | None = None  # when a run asked to stop is killed
        self.started = 0.0
        self.stderr_path = cell_dir.parent / f".{cell_dir.name}.stderr"
        self.stdout_path = cell_dir.parent / f".{cell_dir.name}.stdout"  # the run's own summary lines

    def start(self, resume: bool) -> None:
        cmd = [sys.executable, "-m", self.cell.module, *self.cell.run_args(self.exp), "--out", str(self.cell_dir)]
        if resume and not self.cell.serve:  # a load test has no documents to resume: it runs again whole
            cmd.append("--resume")
            # An earlier session's summary: this one writes its own, and a hard death must not pass the old one off.
            (self.cell_dir / SUMMARY).unlink(missing_ok=True)
        self.started = time.monotonic()
        with open(self.stderr_path, "w") as err, open(self.stdout_path, "w") as out:
            # A session of its own: the cell's processes form one group, stopped together, and a Ctrl-C at the
            # terminal reaches the sweep first, which stops the cell in order.
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True,
                                         env={**os.environ, **self.env}, preexec_fn=self._before_exec)  # fmt: skip

    def _before_exec(self) -> None:
        """In the cell's process: die with the sweep, and keep to the cell's own cores where it has some (cells side
        by side on all cores would slow each other down and make every figure a figure of the crowding)."""
        _set_parent_death_signal()
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def poll(self) -> bool:
        """Whether the run is still going; shows its progress, and stops it at its timeout."""
        if self.proc.poll() is not None:
            return False
        if self.stop_by is None and self.elapsed_s > self.cell.timeout_s(self.exp):
            self.timed_out = True
            self.stop(signal.SIGTERM)  # llmopt.run then writes a valid partial summary
        if self.stop_by is not None and time.monotonic() > self.stop_by:
            kill_group(self.proc)
            return False
        self.progress.update()
        self.board.update(self.label, self.progress.line(self.label, self.elapsed_s))
        return True

    def stop(self, sig: int) -> None:
        """Ask the whole group to stop; `poll` kills what is left after the grace period."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        if self.stop_by is None:
            self.stop_by = time.monotonic() + STOP_GRACE_S

    def wait_stopped(self) -> None:
        """After `stop`: wait for the run to write its partial summary and exit, then kill what is left."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(0.0, (self.stop_by or 0.0) - time.monotonic()))
        kill_group(self.proc)

    def finish(self) -> dict[str, Any]:
        """The ended run's summary, or the sweep's verdict on it (a timeout, a crash, a strategy this machine lacks)."""
        kill_group(self.proc)  # the run has ended: nothing it started may stay behind
        self.progress.update()
        self.board.end(self.label, self.progress.line(self.label, self.elapsed_s))
        stderr_text = self.stderr_path.read_text(errors="replace")
        for path, name in ((self.stderr_path, "stderr.log"), (self.stdout_path, "stdout.log")):
            if self.cell_dir.is_dir():
                shutil.move(str(path), self.cell_dir / name)
            else:
                path.unlink(missing_ok=True)
        return verdict(self.cell, self.exp, self.cell_dir, self.proc.returncode, self.timed_out, stderr_text)


def run_cell(cell: Cell, exp: Experiment, cell_dir: Path, resume: bool, label: str, board: ProgressBoard,
             env: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run one cell to its end (or its timeout) and return what it ended as: its summary, or the sweep's verdict."""
    run = CellRun(cell, exp, cell_dir, label, board, env)
    run.start(resume)
    try:
        while run.poll():
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        board.end(label)
        run.stop(signal.SIGINT)
        run.wait_stopped()
        raise
    finally:
        kill_group(run.proc)  # the sweep is leaving: nothing the cell started may stay behind
    return run.finish()


def verdict(cell: Cell, exp: Experiment, cell_dir: Path, returncode: int | None, timed_out: bool,
            stderr_text: str) -> dict[str, Any]:  # fmt: skip
    """What a cell ended as: its run's summary, or (no summary, a timeout) the sweep's verdict, written beside it."""
    state = read_state(cell_dir) if (cell_dir / SUMMARY).is_file() else None
    if state is not None and not timed_out:
        return state
    # No summary (a usage error, a strategy this machine cannot run, a hard crash) or a timeout: the sweep says why.
    unavailable = returncode == EXIT_UNAVAILABLE and not timed_out
    if timed_out:
        error = f"timed out after {cell.timeout_s(exp)} s"
    elif unavailable:
        error = _reason(stderr_text)
    else:
        error = f"exit code {returncode}"
    return not_run(cell, cell_dir, "unavailable" if unavailable else "failed", error,
                   stderr_tail="" if unavailable else _tail(stderr_text), returncode=returncode, timed_out=timed_out,
                   partial_summary=state)  # fmt: skip


def not_run(cell: Cell, cell_dir: Path, status: str, error: str, **extra: Any) -> dict[str, Any]:
    """The sweep's verdict on a cell its run gave none for (or that never ran), written into the cell's folder."""
    row = {
        "strategy": cell.strategy,
        "model": cell.model,
        "batch_size": cell.batch_size,
        "status": status,
        "errors": [error],
        # A timed-out cell is resumed by the next sweep (its finished documents are kept), not started again.
        "timed_out": False,
        "stderr_tail": "",
        **extra,
    }
    write_verdict(cell_dir, row)
    return row


def _reason(stderr_text: str) -> str:
    """The one line a run prints when its strategy cannot run here, without the program's name."""
    lines = [line for line in stderr_text.splitlines() if "error:" in line]
    return lines[-1].split("error:", 1)[1].strip() if lines else "cannot run on this machine"
