"""llmopt loadtest (python -m llmopt.loadtest): load-test an OpenAI-compatible endpoint at several concurrency
levels or request rates.

llmopt loadtest --endpoint http://127.0.0.1:8000 --concurrency 1,5,10,20 --latency-budget 2
llmopt loadtest --serve vllm --model tiny --rate 1,2,4 --requests 40 --price-per-hour 4.1
llmopt loadtest --endpoint http://127.0.0.1:8000 --search concurrency --slo ttft=500ms,tpot=50ms --tokenizer M
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from llmopt.commands import common
from llmopt.errors import UsageError
from llmopt.serving import loadtest, scrape
from llmopt.serving.server import DEFAULT_START_TIMEOUT_S
from llmopt.stopping import StopRequest

DEFAULT_REQUESTS = 50  # measured synthetic requests per level when neither --requests nor --duration is given
DEFAULT_SYNTHETIC_TOKENS = 512  # the prompts when none are asked for and a tokenizer is at hand
GGUF_TYPE_NAMES = ("f16", "q8_0", "q4_k_m", "q4_0")  # llmopt.models.gguf.GGUF_TYPES, without importing it to parse


def _numbers(kind: type, minimum: float) -> Any:
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if not values or any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers of at least {minimum}, got {text!r}")
        return values

    return parse


def parser(prog: str) -> common.Parser:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n")[0])
    target = p.add_argument_group("target")
    target.add_argument("--endpoint", help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    target.add_argument("--serve", metavar="ENGINE",
                        help="start a server instead: vllm, vllm-awq, vllm-gptq (vllm serve), llamacpp (llama_cpp.server) "
                             "or transformers (transformers serve)")  # fmt: skip
    target.add_argument("--model", help="with --serve: the model to serve (smollm2-135m, tiny, a folder, a .gguf file, a Hub id)")
    target.add_argument("--serve-arg", action="append", default=[],
                        help="one more argument for the server (repeatable; --serve-arg=--flag for a flag)")  # fmt: skip
    target.add_argument("--serve-timeout", type=float, default=DEFAULT_START_TIMEOUT_S,
                        help=f"seconds the server may take to become healthy (default {DEFAULT_START_TIMEOUT_S:g})")  # fmt: skip
    target.add_argument("--gguf-type", choices=GGUF_TYPE_NAMES,
                        help="--serve llamacpp: this GGUF type (default: a .gguf file as is, a checkpoint q4_k_m)")  # fmt: skip
    target.add_argument("--served-model", help="the request's model name (default: the first of GET /v1/models)")
    target.add_argument("--api", choices=["completions", "chat"], default="completions")
    target.add_argument("--no-stream", dest="stream", action="store_false", help="whole answers: no TTFT or ITL")
    target.add_argument("--api-key-env", help="name of the environment variable holding the API key (never written)")
    load = p.add_argument_group("load")
    load.add_argument("--concurrency", type=_numbers(int, 1), help="closed loop: users at each level, e.g. 1,5,10,20")
    load.add_argument("--rate", type=_numbers(float, 0.001), help="open loop: Poisson arrivals per second, e.g. 1,2,4")
    load.add_argument("--requests", type=common.positive_int,
                      help="measured requests per level (default 50 synthetic, or one pass of a dataset)")  # fmt: skip
    load.add_argument("--duration", type=float, help="seconds per level instead of a request count")
    load.add_argument("--requests-per-user", type=common.positive_int,
                      help="closed loop: a level measures at least this many requests per user (a search's heavier "
                      "levels then still see every user busy)")  # fmt: skip
    load.add_argument("--warmup-requests", type=int, help="unmeasured requests first (default: one per user; rate: 2)")
    load.add_argument("--max-inflight", type=common.positive_int, default=256, help="open loop: most requests in flight")
    load.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take (error kind: timeout)")
    load.add_argument("--grace", type=float, default=30.0, help="with --duration: seconds a running request may finish")
    load.add_argument("--warmup-s", type=float, default=0.0,
                      help="steady state: leave out requests sent in a level's first S seconds (default 0)")  # fmt: skip
    load.add_argument("--cooldown-s", type=float, default=0.0,
                      help="steady state: leave out requests ending in a level's last S seconds (default 0)")  # fmt: skip
    load.add_argument("--seed", type=int, help="seed of the prompts and arrivals (default: a fresh one, recorded)")
    load.add_argument("--burstiness", type=float, default=1.0, help="rate: gamma shape of the gaps (1 Poisson, <1 burstier)")
    load.add_argument("--ramp-up", type=float, default=0.0, help="rate: seconds over which it climbs from 0 to each level")
    load.add_argument("--trace", help="replay a Mooncake JSONL trace (timestamp ms, input_length, output_length, hash_ids)")
    load.add_argument("--time-scale", type=float, default=1.0, help="--trace: replay this many times faster (default 1)")
    load.add_argument("--turns", type=common.positive_int, default=1, help="requests per conversation (multi-turn)")
    load.add_argument("--think-time", type=float, default=0.0, help="--turns: seconds between a conversation's turns")
    payload = p.add_argument_group("payloads")
    payload.add_argument("--dataset", help="sample, wikilingua or PATH.jsonl (default: synthetic prompts with a tokenizer)")
    payload.add_argument("--prompt", choices=["published-hf", "published-vllm"], default="published-hf")
    payload.add_argument("--synthetic-tokens", type=common.positive_int,
                         help=f"unique prompts of N tokens (default {DEFAULT_SYNTHETIC_TOKENS} with a tokenizer)")  # fmt: skip
    payload.add_argument("--bins", help=f"prompt-length bins in tokens (default {loadtest.FMBENCH_BINS}, as FMBench)")
    payload.add_argument("--tokenizer", help="tokenizer for counting prompt tokens (default: --model)")
    payload.add_argument(
        "--max-new-tokens", "--max-tokens", dest="max_tokens", type=common.positive_int, default=100,
        help="new tokens per request (default 100; --max-tokens is the same)",
    )  # fmt: skip
    payload.add_argument("--ignore-eos", action="store_true", help="ask the server for exactly --max-new-tokens tokens")
    payload.add_argument(
        "--shared-prefix-tokens", type=common.positive_int, help="every prompt starts with one of K shared prefixes of N tokens"
    )
    payload.add_argument("--prefix-groups", type=common.positive_int, help="--shared-prefix-tokens: K prefixes (default 1)")
    judge = p.add_argument_group("budgets and cost")
    judge.add_argument("--latency-budget", type=float, default=2.0, help="p95 end-to-end seconds (default 2, as FMBench)")
    judge.add_argument("--error-budget", type=common.fraction_or_zero, default=0.0, help="highest error rate accepted")
    judge.add_argument("--price-per-hour", type=float, help="USD per hour of the serving instance, for cost figures")
    judge.add_argument("--slo", help="service-level objectives for goodput, e.g. ttft=500ms,tpot=50ms,e2e=10s (any subset)")
    judge.add_argument("--search", choices=["concurrency", "rate"], help="find the most load that meets --slo")
    judge.add_argument("--search-start", type=float, default=1.0, help="--search: first point (default 1)")
    judge.add_argument("--search-max", type=float, help="--search: highest point tried (default 256 users, 64 req/s)")
    judge.add_argument(
        "--search-tolerance",
        type=common.fraction_or_zero,
        default=0.1,
        help="--search: bisect until the bracket is this fraction of its low end (default 0.1)",
    )
    judge.add_argument(
        "--good-share", type=common.fraction_or_zero, help="--search: a point also needs this share of good requests"
    )
    judge.add_argument("--confidence", type=common.fraction_or_zero,
                       help="a level meets --slo only when each percentile's upper confidence bound (distribution-free) "
                       "at this confidence does, e.g. 0.9 (default: the point estimate)")  # fmt: skip
    watch = p.add_argument_group("observing")
    watch.add_argument("--no-server-metrics", dest="server_metrics", action="store_false",
                       help="do not scrape the server's Prometheus /metrics")  # fmt: skip
    watch.add_argument("--metrics-interval", type=float, default=1.0, help="seconds between /metrics scrapes (default 1)")
    watch.add_argument("--no-saturation-stop", dest="saturation_stop", action="store_false",
                       help="run a level to its end even when its queue only grows")  # fmt: skip
    watch.add_argument("--client-lag-threshold", type=float, default=10.0,
                       help="ms of send or event-loop lag (p99) above which a level is client-bound (default 10)")  # fmt: skip
    watch.add_argument("--quality-reference", type=Path,
                       help="an `llmopt run` folder of the same model: agreement and ROUGE delta of each answer")  # fmt: skip
    watch.add_argument("--quality-floor", type=common.fraction_or_zero,
                       help="with --quality-reference and --slo: quality-aware goodput counts a good request only when "
                       "its answer's ROUGE-L against the reference's answer is at least this")  # fmt: skip
    p.add_argument("--out", type=Path, help="results folder (default results/loadtest-<time>)")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    return p


def check_args(args: Any) -> None:
    if bool(args.endpoint) == bool(args.serve):
        raise UsageError("give --endpoint URL, or --serve STRATEGY --model M to start a server")
    if args.serve:
        check_serve(args)
    elif args.serve_arg or args.gguf_type:
        raise UsageError("--serve-arg and --gguf-type go with --serve")
    if args.endpoint and not args.endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint must be an http:// or https:// URL, got {args.endpoint!r}")
    if sum(map(bool, (args.concurrency, args.rate, args.search, args.trace))) != 1:
        raise UsageError("give --concurrency LEVELS or --rate RATES (one of them), or --search, or --trace")
    if args.timeout <= 0 or args.grace < 0:
        raise UsageError("--timeout must be positive and --grace not negative")
    if args.warmup_s < 0 or args.cooldown_s < 0:
        raise UsageError("--warmup-s and --cooldown-s cannot be negative")
    if args.search and not args.slo:
        raise UsageError("--search needs --slo (what a point must meet)")
    if args.good_share is not None and not args.slo:
        raise UsageError("--good-share needs --slo")
    if (args.search_start < 1 and args.search == "concurrency") or args.search_start <= 0:
        raise UsageError("--search-start must be positive (at least 1 user)")
    if args.burstiness <= 0 or args.ramp_up < 0 or args.time_scale <= 0 or args.think_time < 0:
        raise UsageError("--burstiness and --time-scale must be positive, --ramp-up and --think-time not negative")
    at_a_rate = bool(args.rate) or args.search == "rate"
    if (args.burstiness != 1.0 or args.ramp_up) and not at_a_rate:
        raise UsageError("--burstiness and --ramp-up shape a --rate (or --search rate)")
    if args.trace and (args.turns > 1 or args.shared_prefix_tokens or args.synthetic_tokens):
        raise UsageError("--trace gives the prompts: no --turns, --shared-prefix-tokens or --synthetic-tokens with it")
    if args.prefix_groups and not args.shared_prefix_tokens:
        raise UsageError("--prefix-groups needs --shared-prefix-tokens")
    if args.think_time and args.turns < 2:
        raise UsageError("--think-time needs --turns 2 or more")
    if args.requests and args.duration:
        raise UsageError("give --requests or --duration, not both")
    if args.requests_per_user and (args.duration or args.rate or args.trace or args.search == "rate"):
        raise UsageError("--requests-per-user is for a closed loop counted in requests (--concurrency or --search concurrency)")
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be positive")
    if args.warmup_requests is not None and args.warmup_requests < 0:
        raise UsageError("--warmup-requests cannot be negative")
    if args.api_key_env and not os.environ.get(args.api_key_env):
        raise UsageError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    if args.price_per_hour is not None and args.price_per_hour <= 0:
        raise UsageError("--price-per-hour must be positive")
    if args.latency_budget <= 0:
        raise UsageError("--latency-budget must be positive")
    if args.metrics_interval <= 0:
        raise UsageError("--metrics-interval must be positive")
    if args.client_lag_threshold <= 0:
        raise UsageError("--client-lag-threshold must be positive")
    if args.quality_reference is not None and (args.synthetic_tokens or args.trace):
        raise UsageError("--quality-reference needs dataset payloads, not --synthetic-tokens or --trace")
    if args.confidence is not None and not (args.slo and 0 < args.confidence < 1):
        raise UsageError("--confidence needs --slo and a share between 0 and 1, e.g. 0.9")
    if args.quality_floor is not None and not (args.slo and args.quality_reference):
        raise UsageError("--quality-floor needs --slo and --quality-reference (the answers it is held against)")
    if args.slo:
        from llmopt.serving.stats import parse_slo

        slo = parse_slo(args.slo)
        if not args.stream and set(slo.limits_ms) - {"e2e"}:
            raise UsageError("--slo ttft or tpot needs streaming: drop --no-stream, or use e2e only")


def check_serve(args: Any) -> None:
    """--serve and what goes with it, before anything starts: the engine, and what its server refuses."""
    from llmopt.serving import server

    server.check_engine(args.serve)
    if not args.model:
        raise UsageError("--serve needs --model")
    if args.serve_timeout <= 0:
        raise UsageError("--serve-timeout must be positive")
    if args.gguf_type and args.serve != "llamacpp":
        raise UsageError("--gguf-type goes with --serve llamacpp")
    engine = server.engine_class(args.serve)
    if args.ignore_eos and engine.refuses_ignore_eos:
        raise UsageError(f"{engine.program} answers a request carrying ignore_eos with HTTP 422: drop --ignore-eos")
    if args.served_model and not engine.names_its_model:
        raise UsageError(f"{engine.program} answers only to the model's folder: drop --served-model")
    if args.api_key_env and not engine.takes_api_key:
        raise UsageError(f"{engine.program} takes no API key: drop --api-key-env")


def start_server(args: Any, out: Path, api_key: str | None, outcome: loadtest.Outcome, prog: str) -> Any:
    """The --serve server, started and healthy; ServerFailed (exit 2) with its log's last line, nothing left running."""
    from llmopt.serving.server import ServerFailed, server_for

    options: dict[str, Any] = {"gguf_type": args.gguf_type} if args.serve == "llamacpp" else {}
    srv = server_for(args.serve, args.model, out / "server.log", api_key=api_key, extra_args=args.serve_arg,
                     start_timeout_s=args.serve_timeout, served_name=args.served_model or args.model, **options)  # fmt: skip
    if sys.stderr.isatty():  # progress for a person waiting; a failed start stays one line in a log
        print(f"{prog}: starting {srv.program} {args.model} ({args.serve}) ...", file=sys.stderr)
    try:
        srv.start()
    except ServerFailed as exc:  # its process group is killed already
        raise ServerFailed(f"{exc} (log: {srv.log_path})") from None
    except BaseException:  # Ctrl-C, a missing package: nothing may be left running
        srv.stop(grace_s=10)
        raise
    print(f"{prog}: {srv.program} answers at {srv.url}: {srv.command_line()}", file=sys.stderr)
    if args.ignore_eos and not srv.honours_ignore_eos:
        warning = f"{srv.program} ignores ignore_eos: answers may end before --max-new-tokens, at the end-of-sequence token"
        outcome.warnings.append(warning)
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    return srv


def slo_of(args: Any) -> Any:
    """--slo, judged at --confidence where given."""
    import dataclasses

    from llmopt.serving.stats import parse_slo

    return dataclasses.replace(parse_slo(args.slo), confidence=args.confidence) if args.slo else None


def plan(args: Any, trace: tuple = ()) -> loadtest.LoadPlan:
    if args.search:
        mode, values = args.search, [int(args.search_start) if args.search == "concurrency" else args.search_start]
    elif args.trace:
        mode, values = "trace", [args.time_scale]
    else:
        mode, values = ("concurrency", args.concurrency) if args.concurrency else ("rate", args.rate)
    # Without --requests: 50 synthetic prompts, or one pass of a dataset's (None: run_level counts its bin).
    requests = None if args.duration else (args.requests or (DEFAULT_REQUESTS if args.synthetic_tokens else None))
    if args.trace and not args.requests:
        requests = None  # the whole trace
    search_max = args.search_max or (256 if args.search == "concurrency" else 64)
    return loadtest.LoadPlan(
        mode=mode, values=values, requests=requests,
        duration_s=args.duration, warmup_requests=args.warmup_requests, max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos, seed=args.seed, max_inflight=args.max_inflight, latency_budget_s=args.latency_budget,
        error_budget=args.error_budget, price_per_hour=args.price_per_hour,
        slo=slo_of(args), search=bool(args.search), search_max=search_max,
        search_tolerance=args.search_tolerance, good_share_target=args.good_share, burstiness=args.burstiness,
        ramp_up_s=args.ramp_up, turns=args.turns, think_time_s=args.think_time, grace_s=args.grace,
        warmup_s=args.warmup_s, cooldown_s=args.cooldown_s, requests_per_user=args.requests_per_user,
        shared_prefix=bool(args.shared_prefix_tokens) or args.turns > 1 or bool(args.trace), trace=trace,
    )  # fmt: skip


def choose_defaults(args: Any, tokenizer: Any) -> list[str]:
    """The seed and the payloads where none were asked for, written into `args`; returns what was chosen, to say.
    A fresh seed each test, so that a long-lived server's prefix cache has never seen its synthetic prompts; unique
    synthetic prompts rather than a small dataset sent again and again into that cache, unless a dataset is asked
    for (--dataset, --bins, --quality-reference) or no tokenizer is at hand to make them."""
    import random

    chosen = []
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
        chosen.append(f"seed {args.seed}, fresh for this test (--seed {args.seed} replays it)")
    if args.trace or args.synthetic_tokens or args.dataset:
        return chosen
    if tokenizer is not None and not (args.bins or args.quality_reference):
        args.synthetic_tokens = DEFAULT_SYNTHETIC_TOKENS
        chosen.append(f"payloads: unique synthetic prompts of {DEFAULT_SYNTHETIC_TOKENS} tokens "
                      "(--synthetic-tokens N for another length, --dataset for a dataset's prompts)")  # fmt: skip
    else:
        args.dataset = "sample"
        why = "no tokenizer to make synthetic prompts with (--tokenizer)" if tokenizer is None else "a dataset's bins or quality"
        chosen.append(f"payloads: the bundled sample dataset, since {why}; without --requests each level sends one pass "
                      "of its prompts, and a prefix-caching server has seen them from the second level on")  # fmt: skip
    return chosen


def observing_for(args: Any) -> Any:
    """The watchers' settings (the scraper comes once the endpoint is known); the dataset's summaries and the offline
    reference for quality under load."""
    from llmopt.serving import loadquality
    from llmopt.serving.observe import Observing

    observing = Observing(None, args.saturation_stop, args.client_lag_threshold)
    if not (args.synthetic_tokens or args.trace):
        from llmopt.documents.datasets import load_dataset

        observing.summaries = {doc.id: doc.summary for doc in load_dataset(args.dataset) if doc.summary}
    if args.quality_reference is not None:
        observing.reference, observing.reference_identity = loadquality.load_reference(args.quality_reference)
    observing.slo, observing.quality_floor = slo_of(args), args.quality_floor
    observing.steady_state_s = (args.warmup_s, args.cooldown_s)
    return observing


def quality_summary(args: Any, model: str, observing: Any) -> dict[str, Any] | None:
    """Across levels: the greedy answers' consistency, and how the offline reference run differs from this test."""
    from llmopt.serving import loadquality

    if not observing.summaries:
        return None
    out: dict[str, Any] = {"consistency": loadquality.consistency(observing.answers_by_level)}
    if args.quality_reference is not None:
        out["reference"] = str(args.quality_reference)
        out["reference_notes"] = loadquality.reference_notes(
            observing.reference_identity, model, args.dataset, args.prompt, args.max_tokens, args.ignore_eos, args.api
        )
    return out


def main(argv: list[str] | None = None, prog: str = "llmopt loadtest") -> int:
    args = parser(prog).parse_args(argv)
    check_args(args)
    from llmopt.files import write_json_atomic
    from llmopt.measure.environment import environment
    from llmopt.reports import html
    from llmopt.serving import report, stats
    from llmopt.serving.client import Target

    out = args.out or Path("results") / f"loadtest-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{str(out)!r} already holds results: pass another --out")
    from llmopt.documents.workloads import load_trace

    trace = tuple(load_trace(args.trace)) if args.trace else ()
    tokenizer = loadtest.load_tokenizer(args.tokenizer or args.model)
    seed_fresh = args.seed is None
    defaults = choose_defaults(args, tokenizer)
    bins = loadtest.build_payloads(args.dataset, args.prompt, args.synthetic_tokens, args.bins, tokenizer, args.seed,
                                   args.shared_prefix_tokens or 0, args.prefix_groups or 1, trace)  # fmt: skip
    if not bins:
        raise UsageError("no payload falls into any --bins range")
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    model = args.served_model or (args.model if args.serve else loadtest.served_model(args.endpoint, api_key))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the output folder {str(out)!r}: {exc.strerror or exc}") from None
    the_plan = plan(args, trace)
    outcome = loadtest.Outcome()
    observing = observing_for(args)
    server = None
    levels: list[dict[str, Any]] = []
    stopped: list[dict[str, Any]] = []
    stop = common.stop_on_signals(StopRequest())
    try:
        if args.serve:
            server = start_server(args, out, api_key, outcome, prog)
        endpoint = server.url if server else args.endpoint
        target = Target(endpoint, server.served_name if server else model, args.api, args.stream, api_key, args.timeout)
        if args.server_metrics:
            observing.scraper = scrape.Scraper(endpoint, api_key, args.metrics_interval)
        for line in defaults:  # said once the test is sure to run
            print(f"{prog}: {line}", file=sys.stderr)
        # The first Ctrl-C only asks the level in hand to end (it cancels what is in flight within 0.1 s and keeps its
        # figures); raising in the middle of the event loop would lose the level and could cut a record in two.
        with stop.shielded():
            loadtest.run_levels(the_plan, target, bins, out, levels, stopped, stop,
                                lambda line: print(line, file=sys.stderr), observing, outcome)  # fmt: skip
    except KeyboardInterrupt:
        stop.request()  # the level in flight is in its requests.jsonl; the finished ones go into the summary
    finally:
        if server is not None:
            server.stop()
    judged = levels and the_plan.mode != "trace"  # a trace has one level: nothing to choose between
    recommendation = stats.recommend(levels, args.latency_budget, args.error_budget) if judged else []
    source = (
        f"synthetic:{args.synthetic_tokens}" if args.synthetic_tokens else f"trace:{args.trace}" if args.trace else args.dataset
    )
    summary = {
        "target": {"endpoint": args.endpoint or f"{engine_program(args.serve)} ({args.serve})", "model": model, "api": args.api,
                   "stream": args.stream, "api_key_env": args.api_key_env, **server_facts(server)},
        "load": {"mode": the_plan.mode, "levels": the_plan.values, "requests": the_plan.requests,
                 "requests_per_user": args.requests_per_user,
                 "duration_s": args.duration, "grace_s": args.grace, "warmup_requests": args.warmup_requests,
                 "warmup_s": args.warmup_s, "cooldown_s": args.cooldown_s,
                 "max_tokens": args.max_tokens, "ignore_eos": args.ignore_eos, "seed": args.seed,
                 "seed_fresh": seed_fresh,
                 "timeout_s": args.timeout, "burstiness": args.burstiness, "ramp_up_s": args.ramp_up,
                 "turns": args.turns, "think_time_s": args.think_time, "trace": args.trace,
                 "time_scale": args.time_scale if args.trace else None},
        "payloads": {"source": source, "prompt": args.prompt,
                     "bins": {name: (len(items) or None) for name, items in bins.items()},
                     "unique_per_request": bool(args.synthetic_tokens),
                     "shared_prefix_tokens": args.shared_prefix_tokens, "prefix_groups": args.prefix_groups,
                     "tokens_counted_with": args.tokenizer or args.model, "defaults_chosen": defaults},
        "slo": args.slo,
        "slo_confidence": args.confidence,
        "quality_floor": args.quality_floor,
        "search": outcome.searches,
        "latency_budget_s": args.latency_budget,
        "error_budget": args.error_budget,
        "levels": levels,
        "stopped_early": stopped,
        "recommendation": recommendation,
        "warnings": outcome.warnings,
        "server_gone": outcome.server_gone,
        "complete": outcome.complete and not stop.requested,
        "interrupted": stop.requested,
        # As a run's: ok (every level ran), partial (some did: interrupted, the server gone), failed (none did)
        "status": "ok" if outcome.complete and not stop.requested and levels else "partial" if levels else "failed",
        "observing": {"server_metrics": args.server_metrics, "metrics_interval_s": args.metrics_interval,
                      "saturation_stop": args.saturation_stop, "client_lag_threshold_ms": args.client_lag_threshold,
                      "metrics_notes": observing.scraper.notes if observing.scraper else []},
        "quality": quality_summary(args, model, observing),
    }  # fmt: skip
    summary["environment"] = environment(sys.argv[1:] if argv is None else argv, "llmopt.loadtest")
    write_json_atomic(out / "summary.json", summary)
    report.write(out, summary, plots=args.plots)
    html.write_loadtest(out, summary, report.levels_table(summary))
    for rec in recommendation:
        print(rec["statement"])
    for search in outcome.searches:
        print(search["statement"])
    print(f"results: {out}")
    if stop.requested:
        not_run = ", ".join(f"{s['bin']} {the_plan.mode} {s[the_plan.mode]:g}" for s in stopped if s["reason"] == "interrupted")
        print(f"{prog}: interrupted: {len(levels)} levels kept" + (f"; not run: {not_run}" if not_run else ""),
              file=sys.stderr)  # fmt: skip
        return common.EXIT_INTERRUPTED
    if outcome.server_gone:
        gone = outcome.server_gone
        print(f"{prog}: incomplete: the server went away at {gone['utc']} ({gone['how']}); the finished levels are kept",
              file=sys.stderr)  # fmt: skip
        return common.EXIT_PARTIAL
    return common.EXIT_OK


def engine_program(engine: str) -> str:
    from llmopt.serving.server import engine_class

    return engine_class(engine).program


def server_facts(server: Any) -> dict[str, Any]:
    """What the summary says of a server the test started: its engine, the line that starts it again, how it serves."""
    if server is None:
        return {}
    return {"engine": server.engine, "server_command": server.command_line(), "server_notes": server.notes()}


def entry(prog: str = "llmopt loadtest", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
