"""`python -m llmopt.tune`: the same as `llmopt tune` (llmopt/commands/tune.py)."""

import sys

from llmopt.commands.tune import entry

if __name__ == "__main__":
    sys.exit(entry("python -m llmopt.tune"))
