"""`python -m llmopt.sweep`: the same as `llmopt sweep` (llmopt/commands/sweep.py)."""

import sys

from llmopt.commands.sweep import entry

if __name__ == "__main__":
    sys.exit(entry("python -m llmopt.sweep"))
