"""`python -m llmopt.drift`: the same as `llmopt drift` (llmopt/commands/drift.py)."""

import sys

from llmopt.commands.drift import entry

if __name__ == "__main__":
    sys.exit(entry("python -m llmopt.drift"))
