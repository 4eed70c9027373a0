"""llmopt sweep (python -m llmopt.sweep): every cell of an experiment in its own process, then the report.

llmopt sweep experiments/cpu-demo.yaml [--out results/cpu-demo] [--force] [--no-report] [--only CELL]
    [--gpus all|0,1,...] [--parallel N] [--executor local|ray] [--ray-address HOST:PORT]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llmopt.commands import common
from llmopt.errors import UsageError
from llmopt.stopping import StopRequest

if TYPE_CHECKING:
    from llmopt.sweeps.sweep import Executor


class TerminalBoard:
    """The running cells' progress on stderr. On a terminal: one line per running cell, redrawn in place, with the
    sweep's own lines (a cell has ended) printed above them. Elsewhere (a log file, which should not fill with
    control characters): each running cell's line every PLAIN_EVERY_S s, and the sweep's lines as they come."""

    PLAIN_EVERY_S = 30.0

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.lines: dict[str, str] = {}
        self.printed: dict[str, float] = {}
        self.drawn = 0  # lines of progress on the screen now

    def _erase(self) -> None:
        if self.drawn:
            sys.stderr.write(f"\x1b[{self.drawn}F\x1b[J")  # to the first progress line, clear to the end
            self.drawn = 0

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns - 1  # a wrapped line would throw the redraw off
        self._erase()
        for text in self.lines.values():
            sys.stderr.write(text[:width] + "\n")
        self.drawn = len(self.lines)
        sys.stderr.flush()

    def update(self, key: str, text: str) -> None:
        self.lines[key] = text
        if self.tty:
            self._draw()
        elif time.monotonic() - self.printed.setdefault(key, time.monotonic()) >= self.PLAIN_EVERY_S:
            print(text, file=sys.stderr, flush=True)
            self.printed[key] = time.monotonic()

    def end(self, key: str, text: str | None = None) -> None:
        """A cell has ended: its last figures, on a line of their own, and no more updates."""
        self.lines.pop(key, None)
        self.printed.pop(key, None)
        if text:
            self.say(text)
        elif self.tty:
            self._draw()

    def say(self, text: str) -> None:
        if self.tty:
            self._erase()
            print(text, file=sys.stderr, flush=True)
            self._draw()
        else:
            print(text, file=sys.stderr, flush=True)


def _executor(args: argparse.Namespace) -> Executor:
    """Where the cells run: this machine (one at a time, or side by side), or a Ray cluster."""
    from llmopt.sweeps.sweep import make_executor

    return make_executor(args.executor, args.gpus, args.parallel, args.ray_address)


def main(argv: list[str] | None = None, prog: str = "llmopt sweep") -> int:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path, help="experiments/NAME.yaml")
    p.add_argument("--out", type=Path, help="results folder (default results/<experiment name>)")
    p.add_argument("--force", action="store_true", help="run every cell again, finished ones too")
    p.add_argument("--no-report", dest="report", action="store_false", help="do not write the report at the end")
    p.add_argument("--only", action="append", metavar="CELL", help="run only this cell (repeatable); the report shows all")
    p.add_argument("--gpus", metavar="all|0,1,...", help="run cells side by side, each on GPUs of its own from these")
    p.add_argument("--parallel", type=int, metavar="N", help="run N cells side by side (a machine without GPUs)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="this machine, or a Ray cluster")
    p.add_argument("--ray-address", metavar="HOST:PORT", help="the Ray cluster (default: the one on this machine)")
    args = p.parse_args(argv)
    from llmopt.sweeps import experiment
    from llmopt.sweeps.sweep import sweep

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
    executor = _executor(args)
    common.stop_on_signals(StopRequest())  # SIGTERM too: the cells run in sessions of their own and must be stopped
    board = TerminalBoard()
    results = sweep(exp, root, args.force, executor, board, board.say)
    if exp.drift and not args.only:
        from llmopt.sweeps.sweep import run_drift

        run_drift(exp, root, board.say)
    failed = sum(state.get("status") == "failed" for _, state in results)
    unavailable = sum(state.get("status") == "unavailable" for _, state in results)
    where = " on this machine" if args.executor == "local" and not args.ray_address else ""
    print(f"{len(results)} cells, {failed} failed, {unavailable} unavailable{where}: {root}")
    if args.report:
        from llmopt.reports.build import build_report

        written = build_report([root])
        print(f"report: {written.markdown}")
        for line in written.left_out:
            print(f"{prog}: left out: {line}", file=sys.stderr)
    return common.EXIT_OK


def entry(prog: str = "llmopt sweep", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
