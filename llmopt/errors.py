"""Errors the command lines turn into one line on stderr: exit code 2 for bad input, 69 where a strategy cannot run."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: a flag, a file, a model name. Printed as one line, exit code 2."""


class StrategyUnavailable(UsageError):
    """A strategy cannot run here: a package is missing or the hardware is not there. The message says how to fix it.
    Exit code 69, so that a sweep records it as unavailable rather than failed."""
