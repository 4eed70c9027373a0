"""What every llmopt command line shares: one-line errors with exit code 2, and argument types."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from llmopt.errors import StrategyUnavailable, UsageError
from llmopt.stopping import StopRequest

# Exit codes every command shares (README, "Exit codes").
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
EXIT_UNAVAILABLE = 69  # sysexits' EX_UNAVAILABLE: the strategy cannot run on this machine
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line, like every other usage error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def batch_size(text: str) -> int | str:
    """A positive integer, or "auto"."""
    if text == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}") from None


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def fraction_or_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def stop_on_signals(stop: StopRequest) -> StopRequest:
    """Ctrl-C or a `kill` (a sweep's timeout, a scheduler) leaves the same valid partial result.

    The handler notes the request (a library may catch KeyboardInterrupt inside a generate call and carry on; the
    runner checks the request after every batch) and raises KeyboardInterrupt unless the job is writing its records.
    """

    def handler(signum: int, frame: object) -> None:
        stop.request()
        if stop.may_interrupt:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def guarded(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except StrategyUnavailable as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
