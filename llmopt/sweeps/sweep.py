"""Every cell of an experiment: finished cells are skipped, interrupted ones resumed, failed and unavailable ones tried
again (`force`: all of them again), by an executor that runs what is left (this machine, one cell at a time or side by
side; or a Ray cluster). The experiment file is copied beside the cells, so that the results folder says what it
holds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from llmopt.sweeps.cells import ProgressBoard
from llmopt.sweeps.experiment import Cell, Experiment
from llmopt.sweeps.plan import Done, Pending, plan


class Executor(Protocol):
    """Runs the cells left to run, calling `done` with each one's summary or verdict as it ends."""

    def run(self, exp: Experiment, root: Path, todo: list[Pending], board: ProgressBoard, done: Done) -> None: ...


def summary_of(state: dict[str, Any]) -> str:
    """How a cell ended, in the line a sweep prints."""
    dps = state.get("docs_per_sec")
    why = f" ({state['errors'][0]})" if state["status"] == "unavailable" and state.get("errors") else ""
    return f"{state['status']}" + (f", {dps:.3f} docs/s" if dps else "") + why


def sweep(
    exp: Experiment,
    root: Path,
    force: bool,
    executor: Executor,
    board: ProgressBoard,
    say: Callable[[str], None],
    on_done: Callable[[Cell, dict[str, Any]], None] | None = None,
) -> list[tuple[Cell, dict[str, Any]]]:
    """Run the experiment's cells into `root`; `board` shows the running cells, `say` prints a line, `on_done` hears
    of each cell that ends in this sweep (a tuner writes its history there)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(exp.source, root / "experiment.yaml")
    states: dict[str, dict[str, Any]] = {}
    todo: list[Pending] = []
    for k, cell in enumerate(exp.cells, start=1):
        label = f"cell {k}/{len(exp.cells)} {cell.name}"
        step = plan(cell, root / cell.name, force, label)
        if isinstance(step, Pending):
            todo.append(step)
        else:
            say(f"{label}: done earlier ({step['status']}), skipped")
            states[cell.name] = step

    def done(pending: Pending, state: dict[str, Any]) -> None:
        say(f"{pending.label}: {summary_of(state)}")
        states[pending.cell.name] = state
        if on_done is not None:
            on_done(pending.cell, state)

    executor.run(exp, root, todo, board, done)
    return [(cell, states[cell.name]) for cell in exp.cells if cell.name in states]


def run_drift(exp: Experiment, root: Path, say: Callable[[str], None]) -> int:
    """The experiment's drift section: `llmopt drift` into root/drift, in a process of its own, after the cells.
    Its reference is cached there, so a re-run measures only what changed."""
    return run_drift_args(exp.drift_args(), root / "drift", say)


def run_drift_args(args: list[str], out: Path, say: Callable[[str], None]) -> int:
    """`llmopt drift ARGS --out OUT` in a process of its own (each mode then runs in one of its own too)."""
    cmd = [sys.executable, "-m", "llmopt.drift", *args, "--out", str(out)]
    say(f"drift: {' '.join(cmd[3:])}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stderr.log", "a") as err:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err)
    say(f"drift: {'done' if done.returncode == 0 else f'failed (exit code {done.returncode})'}: {out}")
    return done.returncode


def make_executor(kind: str = "local", gpus: str | None = None, parallel: int | None = None,
                  ray_address: str | None = None) -> Executor:  # fmt: skip
    """Where cells run: this machine (one at a time, side by side on its cores, or each on GPUs of its own from
    `gpus`), or a Ray cluster."""
    from llmopt.errors import UsageError

    if kind == "ray" or ray_address:
        if gpus or parallel:
            raise UsageError("--gpus and --parallel are for one machine; on Ray each cell asks the cluster for its GPUs")
        from llmopt.sweeps.ray_cluster import RayExecutor

        return RayExecutor(ray_address)
    from llmopt.sweeps.gpus import local_gpus
    from llmopt.sweeps.local import LocalExecutor

    if parallel is not None and parallel < 1:
        raise UsageError(f"--parallel must be at least 1, got {parallel}")
    if gpus:
        found = local_gpus(gpus)
        return LocalExecutor(parallel or len(found), found)
    if (parallel or 1) > 1:
        from llmopt.sweeps.gpus import device_name

        if device_name() is not None:
            raise UsageError("--parallel on a machine with GPUs would let cells share them; use --gpus all (or 0,1,...)")
    return LocalExecutor(parallel or 1)
