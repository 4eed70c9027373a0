"""`python -m llmopt.run`: the same as `llmopt run` (llmopt/commands/run.py)."""

import sys

from llmopt.commands.run import entry

if __name__ == "__main__":
    sys.exit(entry("python -m llmopt.run"))
