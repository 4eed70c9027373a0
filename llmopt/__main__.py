"""`python -m llmopt`: the same as the `llmopt` command."""

import sys

from llmopt.commands.main import main

if __name__ == "__main__":
    sys.exit(main())
