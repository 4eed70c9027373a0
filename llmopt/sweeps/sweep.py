"""Every cell of an experiment in turn: finished cells are skipped, interrupted ones resumed, failed and unavailable
ones tried again (`force`: all of them again). The experiment file is copied beside the cells, so that the results
folder says what it holds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmopt.runner.records import CONFIG, VERDICT, read_state
from llmopt.sweeps.cells import FINISHED, ProgressDisplay, run_cell
from llmopt.sweeps.experiment import Cell, Experiment


def sweep(
    exp: Experiment, root: Path, force: bool, display: Callable[[], ProgressDisplay], say: Callable[[str], None]
) -> list[tuple[Cell, dict[str, Any]]]:
    """Run the experiment's cells into `root`; `display` makes each cell's progress line, `say` prints a line."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(exp.source, root / "experiment.yaml")
    results = []
    for k, cell in enumerate(exp.cells, start=1):
        cell_dir = root / cell.name
        label = f"cell {k}/{len(exp.cells)} {cell.name}"
        state = read_state(cell_dir)
        if state is not None and state.get("timed_out") and not force:
            (cell_dir / VERDICT).unlink(missing_ok=True)  # resumed below: its finished documents stand
            state = None
        if force or (state is not None and state.get("status") in ("failed", "unavailable")):
            shutil.rmtree(cell_dir, ignore_errors=True)
            state = None
        if state is not None and state.get("status") in FINISHED:
            say(f"{label}: done earlier ({state['status']}), skipped")
            results.append((cell, state))
            continue
        resume = (cell_dir / CONFIG).is_file()
        state = run_cell(cell, exp, cell_dir, resume, label, display())
        dps = state.get("docs_per_sec")
        why = f" ({state['errors'][0]})" if state["status"] == "unavailable" else ""
        say(f"{label}: {state['status']}" + (f", {dps:.3f} docs/s" if dps else "") + why)
        results.append((cell, state))
    return results


def run_drift(exp: Experiment, root: Path, say: Callable[[str], None]) -> int:
    """The experiment's drift section: `llmopt drift` into root/drift, in a process of its own, after the cells.
    Its reference is cached there, so a re-run measures only what changed."""
    cmd = [sys.executable, "-m", "llmopt.drift", *exp.drift_args(), "--out", str(root / "drift")]
    say(f"drift: {' '.join(cmd[3:])}")
    (root / "drift").mkdir(parents=True, exist_ok=True)
    with open(root / "drift" / "stderr.log", "w") as err:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err)
    say(f"drift: {'done' if done.returncode == 0 else f'failed (exit code {done.returncode})'}: {root / 'drift'}")
    return done.returncode
