"""`python -m llmopt.roofline`: the same as `llmopt roofline` (llmopt/commands/roofline.py)."""

import sys

from llmopt.commands.roofline import entry

if __name__ == "__main__":
    sys.exit(entry("python -m llmopt.roofline"))
