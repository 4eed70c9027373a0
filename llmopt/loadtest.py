"""python -m llmopt.loadtest: load-test an OpenAI-compatible endpoint at several concurrency levels or request rates.

python -m llmopt.loadtest --endpoint http://127.0.0.1:8000 --concurrency 1,5,10,20 --latency-budget 2
python -m llmopt.loadtest --serve vllm --model tiny --rate 1,2,4 --requests 40 --price-per-hour 4.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from llmopt import cli, loadstats
from llmopt.errors import UsageError
from llmopt.loadgen import Load, Payload
from llmopt.stopping import StopRequest

PROG = "python -m llmopt.loadtest"
FMBENCH_BINS = "1-500,500-1000,1000-2000,2000-3000,3000-3840"


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


def parse_bins(text: str) -> list[tuple[str, int, int]]:
    """'1-500,500-1000' -> bins holding prompts of lo <= tokens < hi (the last bin includes hi)."""
    bins = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not (sep and lo.isdigit() and hi.isdigit() and int(lo) < int(hi)):
            raise UsageError(f"--bins: {part!r} is not a range like 500-1000")
        bins.append((part.strip(), int(lo), int(hi)))
    return bins


def parser() -> cli.Parser:
    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    target = p.add_argument_group("target")
    target.add_argument("--endpoint", help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    target.add_argument("--serve", help="start `vllm serve` for this strategy (vllm, vllm-awq, vllm-gptq) instead")
    target.add_argument("--model", help="with --serve: the model to serve (tiny, a folder, a Hub id)")
    target.add_argument("--serve-arg", action="append", default=[], help="one more argument for vllm serve (repeatable)")
    target.add_argument("--served-model", help="the request's model name (default: the first of GET /v1/models)")
    target.add_argument("--api", choices=["completions", "chat"], default="completions")
    target.add_argument("--no-stream", dest="stream", action="store_false", help="whole answers: no TTFT or ITL")
    target.add_argument("--api-key-env", help="name of the environment variable holding the API key (never written)")
    load = p.add_argument_group("load")
    load.add_argument("--concurrency", type=_numbers(int, 1), help="closed loop: users at each level, e.g. 1,5,10,20")
    load.add_argument("--rate", type=_numbers(float, 0.001), help="open loop: Poisson arrivals per second, e.g. 1,2,4")
    load.add_argument("--requests", type=cli.positive_int, help="measured requests per level (default 50)")
    load.add_argument("--duration", type=float, help="seconds per level instead of a request count")
    load.add_argument("--warmup-requests", type=int, help="unmeasured requests first (default: one per user; rate: 2)")
    load.add_argument("--max-inflight", type=cli.positive_int, default=256, help="open loop: most requests in flight")
    load.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    load.add_argument("--seed", type=int, default=0)
    payload = p.add_argument_group("payloads")
    payload.add_argument("--dataset", default="sample", help="sample, wikilingua or PATH.jsonl (default sample)")
    payload.add_argument("--prompt", choices=["published-hf", "published-vllm"], default="published-hf")
    payload.add_argument("--synthetic-tokens", type=cli.positive_int, help="prompts of about N tokens instead of a dataset")
    payload.add_argument("--bins", help=f"prompt-length bins in tokens (default {FMBENCH_BINS}, as FMBench)")
    payload.add_argument("--tokenizer", help="tokenizer for counting prompt tokens (default: --model)")
    payload.add_argument(
        "--max-new-tokens", "--max-tokens", dest="max_tokens", type=cli.positive_int, default=100,
        help="new tokens per request (default 100; --max-tokens is the same)",
    )  # fmt: skip
    payload.add_argument("--ignore-eos", action="store_true", help="ask the server for exactly --max-new-tokens tokens")
    judge = p.add_argument_group("budgets and cost")
    judge.add_argument("--latency-budget", type=float, default=2.0, help="p95 end-to-end seconds (default 2, as FMBench)")
    judge.add_argument("--error-budget", type=cli.fraction_or_zero, default=0.0, help="highest error rate accepted")
    judge.add_argument("--price-per-hour", type=float, help="USD per hour of the serving instance, for cost figures")
    p.add_argument("--out", type=Path, help="results folder (default results/loadtest-<time>)")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    return p


def check_args(args: Any) -> None:
    if bool(args.endpoint) == bool(args.serve):
        raise UsageError("give --endpoint URL, or --serve STRATEGY --model M to start a server")
    if args.serve and not args.model:
        raise UsageError("--serve needs --model")
    if args.endpoint and not args.endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint must be an http:// or https:// URL, got {args.endpoint!r}")
    if bool(args.concurrency) == bool(args.rate):
        raise UsageError("give --concurrency LEVELS or --rate RATES (one of them)")
    if args.requests and args.duration:
        raise UsageError("give --requests or --duration, not both")
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


def _tokenizer(name: str | None) -> Any:
    if not name:
        return None
    from transformers import AutoTokenizer

    from llmopt import models

    try:
        return AutoTokenizer.from_pretrained(models.fetch(name, weights="random").path)  # config and tokenizer only
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a tokenizer for {name!r}: {str(exc).splitlines()[0]}") from None


def build_payloads(args: Any, tokenizer: Any) -> dict[str, list[Payload]]:
    """Payloads grouped into prompt-length bins (one bin for synthetic prompts or without a tokenizer)."""
    from llmopt import data

    if args.synthetic_tokens:
        if tokenizer is None:
            raise UsageError("--synthetic-tokens needs a tokenizer: pass --tokenizer or --model")
        prompts = [synthetic_prompt(tokenizer, args.synthetic_tokens, seed) for seed in range(16)]
        items = [Payload(f"synthetic{i:02d}", p, n) for i, (p, n) in enumerate(prompts)]
        return {f"synthetic-{args.synthetic_tokens}": items}
    docs = data.load_dataset(args.dataset)
    template = data.PROMPTS[args.prompt]
    items = []
    for doc in docs:
        prompt = template(doc.document)
        n = len(tokenizer(prompt)["input_ids"]) if tokenizer is not None else None
        items.append(Payload(doc.id, prompt, n))
    if tokenizer is None:
        return {"all": items}
    bins: dict[str, list[Payload]] = {}
    ranges = parse_bins(args.bins or FMBENCH_BINS)
    for name, lo, hi in ranges:
        last = name == ranges[-1][0]
        bins[name] = [it for it in items if lo <= it.prompt_tokens < hi or (last and it.prompt_tokens == hi)]
    return {name: members for name, members in bins.items() if members}


def synthetic_prompt(tokenizer: Any, n_tokens: int, seed: int) -> tuple[str, int]:
    """Text of about n_tokens tokens: random ordinary tokens, decoded, then counted again (merges may shift it)."""
    import random

    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    text = tokenizer.decode([rng.choice(vocab) for _ in range(n_tokens)], skip_special_tokens=True)
    return text, len(tokenizer(text)["input_ids"])


def served_model(endpoint: str, api_key: str | None) -> str:
    """The first model the server lists, for the requests' `model` field."""
    import urllib.error
    import urllib.request

    root = endpoint.rstrip("/")
    root = root if root.endswith("/v1") else root + "/v1"
    request = urllib.request.Request(root + "/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            listed = json.load(response).get("data") or []
    except urllib.error.HTTPError as exc:
        raise UsageError(f"{root}/models answered HTTP {exc.code}: pass --served-model NAME") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UsageError(f"cannot reach {root}/models ({exc}): is the server up? (or pass --served-model)") from None
    if not listed:
        raise UsageError(f"{root}/models lists no model: pass --served-model NAME")
    return listed[0]["id"]


def run_levels(
    args: Any,
    target: Any,
    bins: dict[str, list[Payload]],
    out: Path,
    levels: list[dict],
    stopped: list[dict],
    stop: StopRequest,
) -> None:
    """Run every level, appending to `levels` as each finishes, so an interrupt keeps the finished ones."""
    from llmopt import loadgen

    mode, values = ("concurrency", args.concurrency) if args.concurrency else ("rate", args.rate)
    for bin_name, payloads in bins.items():
        broken = None
        for value in values:
            if broken or stop.requested:
                reason = broken or "interrupted"
                stopped.append({"bin": bin_name, mode: value, "reason": reason})
                continue
            warmup = args.warmup_requests if args.warmup_requests is not None else (value if mode == "concurrency" else 2)
            load = Load(args.requests if not args.duration else None, args.duration, int(warmup), args.max_tokens,
                        args.ignore_eos)  # fmt: skip
            folder = out / "levels" / bin_name / (f"c{value}" if mode == "concurrency" else f"r{value:g}")
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "requests.jsonl", "w", encoding="utf-8") as sink:

                def record(result: Any, sink: Any = sink) -> None:
                    sink.write(json.dumps(result.as_record()) + "\n")
                    sink.flush()

                if mode == "concurrency":
                    coro = loadgen.closed_loop(target, payloads, int(value), load, record, lambda: stop.requested)
                else:
                    coro = loadgen.open_loop(target, payloads, value, load, args.seed, args.max_inflight, record,
                                             lambda: stop.requested)  # fmt: skip
                results = asyncio.run(coro)
            stats = loadstats.level_stats(results, loadgen.measured_window(results), args.price_per_hour)
            level = {"bin": bin_name, "concurrency": value if mode == "concurrency" else None,
                     "rate": value if mode == "rate" else None, **stats}  # fmt: skip
            levels.append(level)
            _print_level(level, mode)
            broken = loadstats.clearly_broken(level, args.latency_budget, args.error_budget)
            if broken:
                print(f"{PROG}: stopping the {bin_name} sweep: {broken}", file=sys.stderr)


def _print_level(level: dict[str, Any], mode: str) -> None:
    value = level[mode]
    e2e, ttft = level["e2e_s"], level["ttft_s"]

    def f(x: float | None, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    print(
        f"{level['bin']:>12} {mode} {value:<6g} {level['completed']:>4} ok {level['errors']:>3} err  "
        f"{f(level['requests_per_s'], '.2f')} req/s  {f(level['output_tokens_per_s'], '.1f')} tok/s  "
        f"e2e p50 {f(e2e['p50'])} p95 {f(e2e['p95'])} s  ttft p50 {f(ttft['p50'])} s  "
        f"tpot p50 {f(level['tpot_ms']['p50'], '.1f')} ms",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_args(args)
    from llmopt import loadreport
    from llmopt.loadclient import Target
    from llmopt.results import write_json_atomic

    out = args.out or Path("results") / f"loadtest-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{str(out)!r} already holds results: pass another --out")
    tokenizer = _tokenizer(args.tokenizer or args.model)
    bins = build_payloads(args, tokenizer)
    if not bins:
        raise UsageError("no payload falls into any --bins range")
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    model = args.served_model or (args.model if args.serve else served_model(args.endpoint, api_key))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the output folder {str(out)!r}: {exc.strerror or exc}") from None
    server = None
    levels: list[dict[str, Any]] = []
    stopped: list[dict[str, Any]] = []
    stop = cli.stop_on_signals(StopRequest())
    try:
        if args.serve:
            from llmopt.serve import VllmServer

            server = VllmServer(args.serve, args.model, out / "server.log", api_key=api_key, extra_args=args.serve_arg)
            server.served_name = model
            print(f"{PROG}: starting vllm serve {args.model} ({args.serve}) ...", file=sys.stderr)
            try:
                server.start()
            except RuntimeError as exc:
                print(f"{PROG}: error: {exc} (log: {out / 'server.log'})", file=sys.stderr)
                return 1
        endpoint = server.url if server else args.endpoint
        target = Target(endpoint, model, args.api, args.stream, api_key, args.timeout)
        run_levels(args, target, bins, out, levels, stopped, stop)
    except KeyboardInterrupt:
        stop.request()  # the level in flight is in its requests.jsonl; the finished ones go into the summary
    finally:
        if server is not None:
            server.stop()
    recommendation = loadstats.recommend(levels, args.latency_budget, args.error_budget) if levels else []
    summary = {
        "target": {"endpoint": args.endpoint or f"vllm serve ({args.serve})", "model": model, "api": args.api,
                   "stream": args.stream, "api_key_env": args.api_key_env},
        "load": {"mode": "concurrency" if args.concurrency else "rate", "levels": args.concurrency or args.rate,
                 "requests": args.requests if not args.duration else None, "duration_s": args.duration,
                 "warmup_requests": args.warmup_requests, "max_tokens": args.max_tokens, "ignore_eos": args.ignore_eos,
                 "seed": args.seed},
        "payloads": {"source": f"synthetic:{args.synthetic_tokens}" if args.synthetic_tokens else args.dataset,
                     "prompt": args.prompt, "bins": {name: len(items) for name, items in bins.items()},
                     "tokens_counted_with": args.tokenizer or args.model},
        "latency_budget_s": args.latency_budget,
        "error_budget": args.error_budget,
        "levels": levels,
        "stopped_early": stopped,
        "recommendation": recommendation,
        "interrupted": stop.requested,
    }  # fmt: skip
    write_json_atomic(out / "summary.json", summary)
    loadreport.write(out, summary, plots=args.plots)
    for rec in recommendation:
        print(rec["statement"])
    print(f"results: {out}")
    return cli.EXIT_INTERRUPTED if stop.requested else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.guarded(PROG, main))
