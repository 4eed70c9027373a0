"""`python -m llmopt.tiny`: the same as `llmopt tiny` (llmopt/commands/tiny.py)."""

import sys

from llmopt.commands.tiny import entry

if __name__ == "__main__":
    sys.exit(entry("python -m llmopt.tiny"))
