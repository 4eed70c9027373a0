"""python -m llmopt.sweep experiments/X.yaml: every cell in its own `python -m llmopt.run` process, then the report.

A crash, an out-of-memory error or a CUDA context never leaks into the next cell. A cell that crashes or times
out becomes a `failed` row carrying the last lines of its stderr; the sweep goes on. Re-running skips finished
cells (--force runs them again) and resumes interrupted ones.

    python -m llmopt.sweep experiments/cpu-demo.yaml [--out results/cpu-demo] [--force] [--no-report]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llmopt import cli, experiment
from llmopt.errors import UsageError
from llmopt.results import write_json_atomic

PROG = "python -m llmopt.sweep"
CELL_STATUS = "sweep_cell.json"  # what the sweep knows of a cell whose run left no summary (usage error, crash)
STDERR_TAIL_LINES = 12
FINISHED = {"ok", "oom"}
STOP_GRACE_S = 60.0  # how long a cell may take to write its partial summary after SIGTERM before it is killed


def cell_state(cell_dir: Path) -> dict[str, Any] | None:
    """What a cell ended as: the sweep's own verdict (crash, timeout) first, else the run's summary."""
    for name in (CELL_STATUS, "summary.json"):
        path = cell_dir / name
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError:
                return None
    return None


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


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to every process left in the cell's group: an engine process must not outlive its cell and hold
    the GPU the next cell needs."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_cell(cell: experiment.Cell, exp: experiment.Experiment, cell_dir: Path, resume: bool, label: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "llmopt.run", *cell.run_args(exp), "--out", str(cell_dir)]
    if resume:
        cmd.append("--resume")
    stderr_path = cell_dir.parent / f".{cell_dir.name}.stderr"
    started = time.monotonic()
    timed_out = False
    progress = CellProgress(cell_dir / "records.jsonl")
    show = _ProgressLine()
    with open(stderr_path, "w") as err:
        # A session of its own: the cell's processes form one group, stopped together, and a Ctrl-C at the terminal
        # reaches the sweep first, which stops the cell in order.
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
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
        kill_group(proc)  # the run has ended; nothing it started may stay behind
    progress.update()
    show.end(progress.line(label, time.monotonic() - started))
    stderr_text = stderr_path.read_text(errors="replace")
    if cell_dir.is_dir():
        shutil.move(str(stderr_path), cell_dir / "stderr.log")
    else:
        stderr_path.unlink(missing_ok=True)
    state = cell_state(cell_dir) if (cell_dir / "summary.json").is_file() else None
    if state is not None and not timed_out:
        return state
    # No summary (a usage error, a strategy this machine cannot run, a hard crash) or a timeout: the sweep says why.
    cell_dir.mkdir(parents=True, exist_ok=True)
    unavailable = proc.returncode == cli.EXIT_UNAVAILABLE and not timed_out
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
        "stderr_tail": "" if unavailable else _tail(stderr_text),
        "returncode": proc.returncode,
        "partial_summary": state,
    }
    write_json_atomic(cell_dir / CELL_STATUS, row)
    return row


def _reason(stderr_text: str) -> str:
    """The one line a run prints when its strategy cannot run here, without the program's name."""
    lines = [line for line in stderr_text.splitlines() if "error:" in line]
    return lines[-1].split("error:", 1)[1].strip() if lines else "cannot run on this machine"


class _ProgressLine:
    """One progress line on stderr: rewritten in place on a terminal, printed every PLAIN_EVERY_S s elsewhere
    (a log file should not fill with carriage returns)."""

    PLAIN_EVERY_S = 30.0

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_print = time.monotonic()
        self.width = 0

    def update(self, text: str) -> None:
        if self.tty:
            print("\r" + text.ljust(self.width), end="", file=sys.stderr, flush=True)
            self.width = len(text)
        elif time.monotonic() - self.last_print >= self.PLAIN_EVERY_S:
            print(text, file=sys.stderr, flush=True)
            self.last_print = time.monotonic()

    def end(self, text: str | None = None) -> None:
        """The cell has ended: its last figures, on a line of their own, and no more updates."""
        if self.tty:
            print("\r" + (text or "").ljust(self.width), file=sys.stderr, flush=True)
        elif text:
            print(text, file=sys.stderr, flush=True)


def sweep(exp: experiment.Experiment, root: Path, force: bool) -> list[tuple[experiment.Cell, dict[str, Any]]]:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(exp.source, root / "experiment.yaml")
    results = []
    for k, cell in enumerate(exp.cells, start=1):
        cell_dir = root / cell.name
        label = f"cell {k}/{len(exp.cells)} {cell.name}"
        state = cell_state(cell_dir)
        if force or (state is not None and state.get("status") in ("failed", "unavailable")):
            shutil.rmtree(cell_dir, ignore_errors=True)
            state = None
        if state is not None and state.get("status") in FINISHED:
            print(f"{label}: done earlier ({state['status']}), skipped", file=sys.stderr)
            results.append((cell, state))
            continue
        resume = (cell_dir / "config.json").is_file()
        state = run_cell(cell, exp, cell_dir, resume, label)
        dps = state.get("docs_per_sec")
        why = f" ({state['errors'][0]})" if state["status"] == "unavailable" else ""
        print(f"{label}: {state['status']}" + (f", {dps:.3f} docs/s" if dps else "") + why, file=sys.stderr)
        results.append((cell, state))
    return results


def main(argv: list[str] | None = None) -> int:
    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path, help="experiments/NAME.yaml")
    p.add_argument("--out", type=Path, help="results folder (default results/<experiment name>)")
    p.add_argument("--force", action="store_true", help="run every cell again, finished ones too")
    p.add_argument("--no-report", dest="report", action="store_false", help="do not write the report at the end")
    p.add_argument("--only", action="append", metavar="CELL", help="run only this cell (repeatable); the report shows all")
    args = p.parse_args(argv)
    exp = experiment.load(args.experiment)
    if args.only:
        names = [c.name for c in exp.cells]
        unknown = [n for n in args.only if n not in names]
        if unknown:
            raise UsageError(f"--only {unknown[0]!r} is not a cell of {exp.name} (cells: {', '.join(names)})")
        exp = dataclasses.replace(exp, cells=[c for c in exp.cells if c.name in args.only])
    root = args.out or Path("results") / exp.name
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the output folder {str(root)!r}: {exc.strerror or exc}") from None
    from llmopt.stopping import StopRequest

    cli.stop_on_signals(StopRequest())  # SIGTERM too: the cells run in sessions of their own and must be stopped
    results = sweep(exp, root, args.force)
    failed = sum(state.get("status") == "failed" for _, state in results)
    unavailable = sum(state.get("status") == "unavailable" for _, state in results)
    print(f"{len(results)} cells, {failed} failed, {unavailable} unavailable on this machine: {root}")
    if args.report:
        from llmopt import report

        print(f"report: {report.write(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded(PROG, main))
