"""llmopt report (python -m llmopt.report): report.md, summary.csv and plots/ from a sweep's results folder.

llmopt report results/cpu-demo
llmopt report --published lcary-2024      # the published table alone
"""

from __future__ import annotations

from pathlib import Path

from llmopt.commands import common
from llmopt.errors import UsageError
from llmopt.reports.published import PUBLISHED


def main(argv: list[str] | None = None, prog: str = "llmopt report") -> int:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", type=Path, help="a sweep's results folder")
    p.add_argument("--published", choices=sorted(PUBLISHED), help="print a published table and stop")
    args = p.parse_args(argv)
    if args.published:
        from llmopt.reports.published import published_table

        print(published_table(args.published))
        return common.EXIT_OK
    if args.results is None:
        raise UsageError("give a results folder, or --published NAME")
    from llmopt.reports import markdown

    print(markdown.write(args.results))
    return common.EXIT_OK


def entry(prog: str = "llmopt report", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
