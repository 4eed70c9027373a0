"""llmopt sweep (python -m llmopt.sweep): every cell of an experiment in its own process, then the report.

llmopt sweep experiments/cpu-demo.yaml [--out results/cpu-demo] [--force] [--no-report] [--only CELL]
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from llmopt.commands import common
from llmopt.errors import UsageError
from llmopt.stopping import StopRequest


class ProgressLine:
    """A cell's progress on stderr: rewritten in place on a terminal, printed every PLAIN_EVERY_S s elsewhere
    (a log file should not fill with carriage returns), and finished with the cell's last figures."""

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


def main(argv: list[str] | None = None, prog: str = "llmopt sweep") -> int:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path, help="experiments/NAME.yaml")
    p.add_argument("--out", type=Path, help="results folder (default results/<experiment name>)")
    p.add_argument("--force", action="store_true", help="run every cell again, finished ones too")
    p.add_argument("--no-report", dest="report", action="store_false", help="do not write the report at the end")
    p.add_argument("--only", action="append", metavar="CELL", help="run only this cell (repeatable); the report shows all")
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
    common.stop_on_signals(StopRequest())  # SIGTERM too: the cells run in sessions of their own and must be stopped
    results = sweep(exp, root, args.force, ProgressLine, lambda line: print(line, file=sys.stderr))
    if exp.drift and not args.only:
        from llmopt.sweeps.sweep import run_drift

        run_drift(exp, root, lambda line: print(line, file=sys.stderr))
    failed = sum(state.get("status") == "failed" for _, state in results)
    unavailable = sum(state.get("status") == "unavailable" for _, state in results)
    print(f"{len(results)} cells, {failed} failed, {unavailable} unavailable on this machine: {root}")
    if args.report:
        from llmopt.reports import markdown

        print(f"report: {markdown.write([root])}")
    return common.EXIT_OK


def entry(prog: str = "llmopt sweep", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
