"""`python -m llmopt.score`: the same as `llmopt score` (llmopt/commands/score.py)."""

import sys

from llmopt.commands.score import entry

if __name__ == "__main__":
    sys.exit(entry("python -m llmopt.score"))
