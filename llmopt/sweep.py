"""python -m llmopt.sweep experiments/X.yaml: every cell in its own `python -m llmopt.run` process, then the report.

A crash, an out-of-memory error or a CUDA context never leaks into the next cell. A cell that crashes or times
out becomes a `failed` row carrying the last lines of its stderr; the sweep goes on. Re-running skips finished
cells (--force runs them again) and resumes interrupted ones.

    python -m llmopt.sweep experiments/cpu-demo.yaml [--out results/cpu-demo] [--force] [--no-report]
"""

from __future__ import annotations

import dataclasses
import json
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


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def run_cell(cell: experiment.Cell, exp: experiment.Experiment, cell_dir: Path, resume: bool, label: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "llmopt.run", *cell.run_args(exp), "--out", str(cell_dir)]
    if resume:
        cmd.append("--resume")
    stderr_path = cell_dir.parent / f".{cell_dir.name}.stderr"
    started = time.monotonic()
    timed_out = False
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - started
                if elapsed > exp.timeout_s:
                    timed_out = True
                    proc.send_signal(signal.SIGTERM)  # llmopt.run then writes a valid partial summary
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                    break
                done = _count_lines(cell_dir / "records.jsonl")
                rate = f", {done / elapsed:.2f} docs/s" if done else ""
                print(f"\r{label}: {done} docs, {elapsed:.0f} s{rate}   ", end="", file=sys.stderr, flush=True)
                time.sleep(0.5)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
    print(file=sys.stderr)
    stderr_text = stderr_path.read_text(errors="replace")
    if cell_dir.is_dir():
        shutil.move(str(stderr_path), cell_dir / "stderr.log")
    else:
        stderr_path.unlink(missing_ok=True)
    state = cell_state(cell_dir) if (cell_dir / "summary.json").is_file() else None
    if state is not None and not timed_out:
        return state
    # No summary (a usage error, a hard crash) or a timeout: the sweep records the failure itself.
    cell_dir.mkdir(parents=True, exist_ok=True)
    error = f"timed out after {exp.timeout_s} s" if timed_out else f"exit code {proc.returncode}"
    row = {
        "strategy": cell.strategy,
        "model": cell.model,
        "batch_size": cell.batch_size,
        "status": "failed",
        "errors": [error],
        "stderr_tail": _tail(stderr_text),
        "returncode": proc.returncode,
        "partial_summary": state,
    }
    write_json_atomic(cell_dir / CELL_STATUS, row)
    return row


def sweep(exp: experiment.Experiment, root: Path, force: bool) -> list[tuple[experiment.Cell, dict[str, Any]]]:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(exp.source, root / "experiment.yaml")
    results = []
    for k, cell in enumerate(exp.cells, start=1):
        cell_dir = root / cell.name
        label = f"cell {k}/{len(exp.cells)} {cell.name}"
        state = cell_state(cell_dir)
        if force or (state is not None and state.get("status") == "failed"):
            shutil.rmtree(cell_dir, ignore_errors=True)
            state = None
        if state is not None and state.get("status") in FINISHED:
            print(f"{label}: done earlier ({state['status']}), skipped", file=sys.stderr)
            results.append((cell, state))
            continue
        resume = (cell_dir / "config.json").is_file()
        state = run_cell(cell, exp, cell_dir, resume, label)
        dps = state.get("docs_per_sec")
        print(f"{label}: {state['status']}" + (f", {dps:.3f} docs/s" if dps else ""), file=sys.stderr)
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
    results = sweep(exp, root, args.force)
    failed = sum(state.get("status") == "failed" for _, state in results)
    print(f"{len(results)} cells, {failed} failed: {root}")
    if args.report:
        from llmopt import report

        print(f"report: {report.write(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded(PROG, main))
