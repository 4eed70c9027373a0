"""llmopt report (python -m llmopt.report): report.md, report.html, summary.csv and plots/ from results folders.

llmopt report results/cpu-demo                                   # a sweep
llmopt report results/a100-sweep results/t4-colab --out cmp      # sweeps from several machines, side by side
llmopt report results/ --baseline old-results/                   # plain runs, and a regression table
llmopt report --published                                        # every published table
llmopt report results/loadtest-a results/loadtest-b --out cmp   # load tests, level by level, with ratios
llmopt report results/tune-smollm2-135m                          # a search of llmopt tune: its answer again
"""

from __future__ import annotations

import sys
from pathlib import Path

from llmopt.commands import common
from llmopt.errors import UsageError
from llmopt.reports.published import PUBLISHED


def main(argv: list[str] | None = None, prog: str = "llmopt report") -> int:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="*", type=Path, help="results folders: sweeps, runs, or folders holding them")
    p.add_argument("--out", type=Path, help="where to write the report (default: the one results folder given)")
    p.add_argument("--baseline", action="append", type=Path, help="results to compare against (repeatable)")
    p.add_argument("--price-per-kwh", type=float, help="USD per kWh, for the energy cost of each cell")
    p.add_argument("--published", nargs="?", const="all", choices=["all", *sorted(PUBLISHED)],
                   help="print the published tables (or one of them) and stop")  # fmt: skip
    args = p.parse_args(argv)
    if args.published:
        from llmopt.reports.published import published_table

        names = list(PUBLISHED) if args.published == "all" else [args.published]
        print("\n\n".join(published_table(n) for n in names))
        return common.EXIT_OK
    if not args.results:
        raise UsageError("give one or more results folders, or --published")
    if len(args.results) > 1 and args.out is None:
        raise UsageError("several results folders: say where the report goes with --out DIR")
    if args.price_per_kwh is not None and args.price_per_kwh <= 0:
        raise UsageError("--price-per-kwh must be positive")
    from llmopt.reports import loadtests, tune
    from llmopt.reports.build import build_report

    if len(args.results) == 1 and tune.is_tune(args.results[0]):
        if args.out is not None or args.baseline:
            raise UsageError("a tune folder's report is written into it: no --out or --baseline")
        written_tune = tune.write(args.results[0])
        print(written_tune)
        return common.EXIT_OK
    if all(loadtests.is_loadtest(folder) for folder in args.results):
        if len(args.results) < 2:
            raise UsageError("one load test: its report.md is already there; give two or more to compare them")
        for warning in loadtests.workload_warnings(args.results):
            print(f"{prog}: warning: {warning}", file=sys.stderr)
        print(loadtests.write(args.results, args.out))
        return common.EXIT_OK
    written = build_report(args.results, args.out, args.baseline, args.price_per_kwh)
    print(written.markdown)
    if written.html is not None:
        print(written.html)  # the same report as one page to explore in a browser
    for line in written.left_out:
        print(f"{prog}: left out: {line}", file=sys.stderr)
    return common.EXIT_OK


def entry(prog: str = "llmopt report", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
