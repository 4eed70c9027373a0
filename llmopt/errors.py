"""Errors the command lines turn into one line on stderr and exit code 2."""


class UsageError(Exception):
    """Bad input from the user: a flag, a file, a model name. Printed as one line, exit code 2."""


class StrategyUnavailable(UsageError):
    """A strategy cannot run here: a package is missing or the hardware is not there. The message says how to fix it."""
