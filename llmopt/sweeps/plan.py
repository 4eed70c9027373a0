"""What a sweep does with each cell before any runs: skip it (finished earlier), resume it (interrupted or timed
out: its finished documents stand) or start it afresh (failed or unavailable earlier, or `force`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt.results import CONFIG, FINISHED, VERDICT, read_state
from llmopt.sweeps.experiment import Cell


@dataclass(frozen=True)
class Pending:
    """A cell still to run: its label for progress lines, and whether it resumes an earlier session's documents."""

    cell: Cell
    label: str
    resume: bool


Done = Callable[[Pending, dict[str, Any]], None]  # what an executor calls as each cell ends


def plan(cell: Cell, cell_dir: Path, force: bool, label: str) -> Pending | dict[str, Any]:
    """The cell's finished state (to be skipped), or what is left to run of it."""
    state = read_state(cell_dir)
    if state is not None and state.get("timed_out") and not force:
        (cell_dir / VERDICT).unlink(missing_ok=True)  # resumed: its finished documents stand
        state = None
    if force or (state is not None and state.get("status") in ("failed", "unavailable")):
        shutil.rmtree(cell_dir, ignore_errors=True)
        state = None
    elif cell.serve and (state is None or state.get("status") not in FINISHED):
        shutil.rmtree(cell_dir, ignore_errors=True)  # a load test cut short has no requests to resume: it runs anew
        state = None
    if state is not None and state.get("status") in FINISHED:
        return state
    return Pending(cell, label, resume=(cell_dir / CONFIG).is_file())
