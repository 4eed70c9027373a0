"""What every llmopt command line shares: one-line errors and exit codes, argument types, and the signal handlers
that turn Ctrl-C and SIGTERM into a stop request."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable

from llmopt.errors import StrategyUnavailable, UsageError
from llmopt.stopping import StopRequest

# Exit codes every command shares (docs/metrics.md, "Exit codes").
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


def add_token_lengths(p: argparse.ArgumentParser, prompt_tokens: int, new_tokens: int) -> None:
    """--prompt-tokens and --max-new-tokens (the name every llmopt command uses; --new-tokens stays as an alias)."""
    p.add_argument("--prompt-tokens", type=positive_int, default=prompt_tokens, help=f"default {prompt_tokens}")
    p.add_argument(
        "--max-new-tokens", "--new-tokens", dest="new_tokens", type=positive_int, default=new_tokens,
        help=f"new tokens per prompt (default {new_tokens}; --new-tokens is the same)",
    )  # fmt: skip


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
        first = not stop.requested
        stop.request()
        # Only the first signal interrupts: a second one must not cut the clean-up the first one started.
        if first and stop.may_interrupt:
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal or the SSH session went away
        signal.signal(sig, handler)
    return stop


def guarded(prog: str, main: Callable[[list[str] | None, str], int], argv: list[str] | None = None) -> int:
    """Run a command's main; a usage error is one line on stderr and an exit code, never a traceback."""
    try:
        return main(argv, prog)
    except StrategyUnavailable as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # `llmopt ... | head`: the reader of stdout left; the results are on disk already
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        raise
