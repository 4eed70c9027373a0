"""llmopt: one command with a subcommand per job. `llmopt COMMAND --help` describes each.

llmopt run --strategy vllm-awq                      # one loading mode over the Wikilingua sample
llmopt sweep experiments/lcary-2024-a100.yaml       # a matrix of them, then the report
"""

from __future__ import annotations

import difflib
import importlib
import sys

from llmopt.commands import common

# name -> what it does; each is llmopt.commands.<name>, imported only when asked for (--help stays instant).
COMMANDS = {
    "run": "summarize a document set with one loading strategy, and measure it",
    "sweep": "run every cell of an experiment, each in its own process, then the report",
    "report": "report.md, summary.csv and plots from a results folder; published tables",
    "score": "ROUGE of a predictions file, with bootstrap intervals",
    "tune": "the cheapest configuration (mode, engine, knobs) that meets an SLO and keeps quality",
    "drift": "how far each loading mode's token distributions drift from a reference mode",
    "loadtest": "load-test an OpenAI-compatible endpoint at several concurrencies or rates",
    "batchbench": "prefill and decode latency and throughput per batch size, in-process",
    "roofline": "the least time a GPU could take for a run",
    "tiny": "write a tiny random checkpoint, for tests and demos",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: llmopt COMMAND [options]   (llmopt COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return common.EXIT_OK if argv else common.EXIT_USAGE
    if argv[0] == "--version":
        from llmopt import __version__

        print(f"llmopt {__version__}")
        return common.EXIT_OK
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; commands: {', '.join(COMMANDS)}"
        print(f"llmopt: error: unknown command {name!r}{hint}", file=sys.stderr)
        return common.EXIT_USAGE
    command = importlib.import_module(f"llmopt.commands.{name}")
    return command.entry(f"llmopt {name}", argv[1:])
