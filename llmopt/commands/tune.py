"""llmopt tune (python -m llmopt.tune): the cheapest configuration that meets a latency SLO and keeps quality, searched
across loading modes, engines and their knobs.

llmopt tune --model smollm2-135m --slo ttft=2s,tpot=150ms --gate 99% --price-per-hour 0.10
llmopt tune --model meta-llama/Llama-2-7b-chat-hf --objective offline --gate 99%
llmopt tune --model M --space experiments/tune-vllm.yaml --executor ray --resume
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llmopt.commands import common
from llmopt.errors import UsageError
from llmopt.stopping import StopRequest


def _gate(text: str) -> float:
    """'99%', '99' or '0.99' -> 0.99; the bar must be in (0, 100] percent."""
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage like 99%") from None
    share = value / 100 if text.strip().endswith("%") or value > 1 else value
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 100]%, got {text!r}")
    return share


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or any(v < 1 for v in values) or list(values) != sorted(values):
        raise argparse.ArgumentTypeError(f"expected rising positive numbers, one per rung, got {text!r}")
    return values


def _drift_limits(text: str) -> tuple[float, float]:
    """'kl=0.05,top1=0.9' -> (0.05, 0.9); either may be left out."""
    kl, top1 = 0.05, 0.9
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, _, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not like kl=0.05 or top1=0.9") from None
        if name == "kl" and number >= 0:
            kl = number
        elif name == "top1" and 0 <= number <= 1:
            top1 = number
        else:
            raise argparse.ArgumentTypeError(f"{part!r}: kl takes a number >= 0, top1 a share in [0, 1]")
    return kl, top1


def parser(prog: str) -> common.Parser:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the model to serve: smollm2-135m, tiny, a folder or a Hub id")
    p.add_argument("--objective", choices=["online", "offline"],
                   help="online: served under --slo (default); offline: docs/s, the study's question")  # fmt: skip
    p.add_argument("--slo", help="online: objectives every configuration must meet, e.g. ttft=2s,tpot=150ms (@p99 sets "
                   "the percentile; defaults p95 for ttft and tpot, p99 for e2e)")  # fmt: skip
    p.add_argument("--gate", type=_gate, default=0.99, help="the paired ROUGE gate's bar (default 99%%, MLPerf's)")
    p.add_argument("--max-drift", type=_drift_limits, default=(0.05, 0.9),
                   help="drop a quality mode past these: kl=MEAN_KL,top1=AGREEMENT (default kl=0.05,top1=0.9)")  # fmt: skip
    p.add_argument("--price-per-hour", type=float, help="USD per hour of this machine: the cost of each configuration")
    p.add_argument("--optimize", choices=["cost", "throughput", "memory"], default="cost",
                   help="what the winner is best at (cost and throughput rank alike at one price; default cost)")  # fmt: skip
    p.add_argument("--space", type=Path, help="a YAML space file: engines (or modes) and their knob values")
    p.add_argument("--out", type=Path, help="the search's folder (default results/tune-<model>)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out without repeating a trial")
    work = p.add_argument_group("workload")
    work.add_argument("--dataset", default="sample", help="sample (default), wikilingua or PATH.jsonl")
    work.add_argument("--prompt", choices=["published-hf", "chat"], default="published-hf",
                      help="chat: the model's chat template (served over the chat API)")  # fmt: skip
    work.add_argument("--max-new-tokens", type=common.positive_int, default=128)
    search = p.add_argument_group("search")
    search.add_argument("--search", choices=["halving", "grid"], default="halving",
                        help="successive halving (default), or every configuration at the last rung's budget")  # fmt: skip
    search.add_argument("--eta", type=common.positive_int, default=3, help="halving: keep 1 in ETA at each rung (default 3)")
    search.add_argument("--rung-requests", type=_counts, default=(8, 24),
                        help="online: measured requests per load level at each rung (default 8,24)")  # fmt: skip
    search.add_argument("--rung-docs", type=_counts, default=(4, 16),
                        help="offline: documents at each rung (default 4,16)")  # fmt: skip
    search.add_argument("--search-max", type=common.positive_int, default=64, help="online: most users tried (default 64)")
    search.add_argument("--confidence", type=common.fraction_or_zero, default=0.9,
                        help="online: the last rung passes a level only when the SLO holds at this confidence "
                        "(the percentile's upper bound; 0: the point estimate; default 0.9)")  # fmt: skip
    search.add_argument("--finalists", type=common.positive_int, default=2, help="configurations gated (default 2)")
    search.add_argument("--drift-docs", type=common.positive_int, default=4, help="documents of the drift screen")
    search.add_argument("--drift-tokens", type=common.positive_int, default=64, help="summary tokens per drift document")
    search.add_argument("--gate-docs", type=common.positive_int, help="documents of the gate (default: every one)")
    search.add_argument("--reference", default="default", help="the quality reference's loading mode (default default)")
    search.add_argument("--reference-dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    search.add_argument("--quality-floor", type=common.fraction_or_zero, default=0.5,
                        help="quality-aware goodput: an answer counts when its ROUGE-L against the reference's answer "
                        "is at least this (default 0.5)")  # fmt: skip
    search.add_argument("--trial-timeout", type=common.positive_int, default=900, help="seconds one trial may take")
    search.add_argument("--seed", type=int, default=0, help="the search's seed (the validation draws a fresh one)")
    where = p.add_argument_group("where trials run")
    where.add_argument("--executor", choices=["local", "ray"], default="local")
    where.add_argument("--ray-address", metavar="HOST:PORT")
    where.add_argument("--gpus", metavar="all|0,1,...", help="run trials side by side, each on GPUs of its own")
    where.add_argument("--parallel", type=int, metavar="N", help="run N trials side by side (no GPUs)")
    return p


def settings_from(args: Any, objective: str) -> Any:
    from llmopt.tuning.settings import Settings, enough_requests

    args.rung_requests, raised = enough_requests(args.slo if objective == "online" else None, args.confidence,
                                                 args.rung_requests)  # fmt: skip
    if raised:
        print(f"llmopt tune: {raised}", file=sys.stderr)
    return Settings(
        model=args.model, objective=objective, optimize=args.optimize, dataset=args.dataset, prompt=args.prompt,
        max_new_tokens=args.max_new_tokens, slo=args.slo, gate=args.gate, max_kl=args.max_drift[0],
        min_top1=args.max_drift[1], price_per_hour=args.price_per_hour, reference=args.reference,
        reference_dtype=args.reference_dtype, api="chat" if args.prompt == "chat" else "completions",
        search=args.search, eta=max(2, args.eta), confidence=args.confidence, drift_docs=args.drift_docs,
        drift_tokens=args.drift_tokens, gate_docs=args.gate_docs, finalists=args.finalists,
        search_max=args.search_max, rung_requests=args.rung_requests, rung_docs=args.rung_docs,
        trial_timeout_s=args.trial_timeout, quality_floor=args.quality_floor, seed=args.seed,
    )  # fmt: skip


def check(args: Any, objective: str) -> None:
    if args.price_per_hour is not None and args.price_per_hour <= 0:
        raise UsageError("--price-per-hour must be positive")
    if objective == "online":
        if not args.slo:
            raise UsageError("--objective online needs --slo, e.g. --slo ttft=2s,tpot=150ms (or --objective offline)")
        from llmopt.serving.stats import parse_slo

        parse_slo(args.slo)
    elif args.slo:
        raise UsageError("--slo is for --objective online: offline, the tuner maximizes docs/s")
    from llmopt import strategies

    strategies.resolve(args.reference)


def prepare_out(args: Any, settings: Any) -> Path:
    """The search's folder: new, or (with --resume) one holding the same search."""
    import json

    from llmopt.tuning.history import HISTORY, SUMMARY

    out = args.out or Path("results") / f"tune-{Path(args.model).name}"
    started = (out / HISTORY).is_file() or (out / SUMMARY).is_file()
    if started and not args.resume:
        raise UsageError(f"{str(out)!r} holds a search already: pass --resume to continue it, or another --out")
    if args.resume and started:
        try:
            earlier = json.loads((out / SUMMARY).read_text()).get("settings", {})
        except (OSError, ValueError):
            earlier = {}
        changed = settings.differs(earlier)
        if changed:
            what = ", ".join(f"{k} ({earlier[k]!r} then, {getattr(settings, k)!r} now)" for k in changed)
            raise UsageError(f"--resume: {out} was a search with other settings: {what}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the output folder {str(out)!r}: {exc.strerror or exc}") from None
    return out


def main(argv: list[str] | None = None, prog: str = "llmopt tune") -> int:
    args = parser(prog).parse_args(argv)
    from llmopt.tuning import space as spaces

    objective = args.objective or spaces.space_objective(args.space) or "online"
    check(args, objective)
    space = (spaces.load_space(args.space, objective, args.model) if args.space
             else spaces.default_space(objective, args.model))  # fmt: skip
    settings = settings_from(args, objective)  # after the space, so bad input stays one line before any note
    if not space.configs:
        why = "; ".join(f"{k}: {v}" for k, v in space.unavailable.items()) or "the space is empty"
        raise UsageError(f"nothing to search on this machine ({why})")
    out = prepare_out(args, settings)
    from llmopt.sweeps.sweep import make_executor

    executor = make_executor(args.executor, args.gpus, args.parallel, args.ray_address)
    stop = common.stop_on_signals(StopRequest())
    from llmopt.tuning.tune import Tuner

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    tuner = Tuner(settings, space, out, executor, say, lambda drift_args, folder: _drift(drift_args, folder, say))
    say(f"{prog}: {len(space.configs)} configurations of {args.model} ({space.source} space, {objective}), "
        f"results in {out}" + (f", {tuner.history.resumed} trials already done" if tuner.history.resumed else ""))  # fmt: skip
    try:
        result = tuner.run()
    except KeyboardInterrupt:
        stop.request()
        tuner.save("interrupted")
        print(f"{prog}: interrupted: {len(tuner.history.trials)} trials kept in {out}; continue with --resume",
              file=sys.stderr)  # fmt: skip
        return common.EXIT_INTERRUPTED
    from llmopt.reports import tune as tune_report

    written = tune_report.write(out)
    print(tune_report.terminal(result))
    print(f"results: {out} (report: {written})")
    return common.EXIT_OK


def _drift(drift_args: list[str], folder: Path, say: Any) -> int:
    from llmopt.sweeps.sweep import run_drift_args

    return run_drift_args(drift_args, folder, say)


def entry(prog: str = "llmopt tune", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
