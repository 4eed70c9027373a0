"""`python -m llmopt.batchbench`: the same as `llmopt batchbench` (llmopt/commands/batchbench.py)."""

import sys

from llmopt.commands.batchbench import entry

if __name__ == "__main__":
    sys.exit(entry("python -m llmopt.batchbench"))
