"""`python -m llmopt.report`: the same as `llmopt report` (llmopt/commands/report.py)."""

import sys

from llmopt.commands.report import entry

if __name__ == "__main__":
    sys.exit(entry("python -m llmopt.report"))
