"""Errors the command lines turn into one line on stderr and exit code 2."""

from __future__ import annotations

from pathlib import Path


class UsageError(Exception):
    """Bad input from the user: a flag, a file, a model name. Printed as one line, exit code 2."""


class StrategyUnavailable(UsageError):
    """A strategy cannot run here: a package is missing or the hardware is not there. The message says how to fix it."""


def read_user_file(path: Path, what: str) -> str:
    """The text of a file the user named, or a usage error saying what is wrong with it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {str(path)!r}: {exc}") from None
