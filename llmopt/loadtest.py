"""`python -m llmopt.loadtest`: the same as `llmopt loadtest` (llmopt/commands/loadtest.py)."""

import sys

from llmopt.commands.loadtest import entry

if __name__ == "__main__":
    sys.exit(entry("python -m llmopt.loadtest"))
