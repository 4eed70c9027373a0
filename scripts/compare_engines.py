"""The same load against each serving engine for one model: `llmopt loadtest --serve ENGINE` once per engine, one
after another on the same cores, then `llmopt report` over the results and one table.

    python scripts/compare_engines.py --model smollm2-135m --out results/engines

Each engine gets the same prompts (synthetic, a new one per request, so that no engine's prefix cache helps it), the
same closed-loop levels, greedy decoding and the same --max-new-tokens. No --ignore-eos: transformers serve refuses it
and llama_cpp.server ignores it, so an answer may end early at the end-of-sequence token; the table shows the output
tokens each engine really gave and whether its server counted them (usage) or the client counted chunks.
`transformers+cb` is transformers serve with --continuous-batching. `--engines` picks and orders them (the first is the
report's baseline).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ENGINES = {
    "vllm": ["--serve", "vllm"],
    "llamacpp": ["--serve", "llamacpp"],
    "transformers": ["--serve", "transformers"],
    "transformers+cb": ["--serve", "transformers", "--serve-arg=--continuous-batching"],
}


def run_engine(name: str, args: argparse.Namespace, out: Path) -> int:
    cmd = [sys.executable, "-m", "llmopt.loadtest", *ENGINES[name], "--model", args.model,
           "--concurrency", args.concurrency, "--requests", str(args.requests), "--max-new-tokens", str(args.max_tokens),
           "--synthetic-tokens", str(args.prompt_tokens), "--latency-budget", str(args.latency_budget),
           "--no-plots", "--out", str(out)]  # fmt: skip
    print("$ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    return subprocess.run(cmd).returncode


def rows(name: str, out: Path) -> list[list[str]]:
    summary = json.loads((out / "summary.json").read_text())
    found = []
    for lv in summary["levels"]:
        records = [json.loads(line) for line in (out / "levels" / lv["bin"] / f"c{lv['concurrency']}" / "requests.jsonl").open()]
        ok = [r for r in records if not r["warmup"] and r["ok"]]
        counted = "usage" if ok and all(r["usage_from_server"] for r in ok) else "chunks"

        def q(figure: str, p: str = "p50", spec: str = ".3f", level: dict[str, Any] = lv) -> str:
            value = (level.get(figure) or {}).get(p)
            return "–" if value is None else format(value, spec)

        tokens = lv.get("output_tokens_mean")
        found.append([name, str(lv["concurrency"]), f"{lv['completed']}/{lv['requests']}",
                      f"{lv['requests_per_s']:.2f}" if lv.get("requests_per_s") else "–",
                      f"{lv['output_tokens_per_s']:.1f}" if lv.get("output_tokens_per_s") else "–",
                      q("ttft_s"), q("ttft_s", "p95"), q("tpot_ms", spec=".1f"), q("e2e_s"), q("e2e_s", "p95"),
                      "–" if tokens is None else f"{tokens:.1f}", counted])  # fmt: skip
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--engines", default="vllm,llamacpp,transformers", help=f"comma-separated, of {', '.join(ENGINES)}")
    p.add_argument("--concurrency", default="1,4")
    p.add_argument("--requests", type=int, default=20, help="measured requests per level")
    p.add_argument("--max-new-tokens", dest="max_tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=256, help="synthetic prompt length")
    p.add_argument("--latency-budget", type=float, default=600.0, help="high: every level runs (no early stop)")
    p.add_argument("--out", type=Path, default=Path("results/engines"))
    args = p.parse_args()
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown or not names:
        p.error(f"--engines takes {', '.join(ENGINES)}; not {', '.join(unknown) or 'nothing'}")
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} already holds results: pass another --out")
    done = []
    for name in names:
        folder = args.out / name.replace("+", "-")
        code = run_engine(name, args, folder)
        if code != 0 or not (folder / "summary.json").is_file():
            print(f"{name}: llmopt loadtest exited with {code}; left out of the table", file=sys.stderr)
            continue
        done.append((name, folder))
    if not done:
        return 1
    if len(done) > 1:
        compared = args.out / "compared"
        subprocess.run([sys.executable, "-m", "llmopt.report", *[str(f) for _, f in done], "--out", str(compared)], check=True)
    head = ["engine", "users", "ok", "req/s", "out tok/s", "TTFT p50 s", "TTFT p95 s", "TPOT p50 ms", "e2e p50 s",
            "e2e p95 s", "out tokens", "counted by"]  # fmt: skip
    table = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, folder in done:
        table += ["| " + " | ".join(row) + " |" for row in rows(name, folder)]
    text = "\n".join(table) + "\n"
    (args.out / "engines.md").write_text(text)
    print(text)
    for name, folder in done:
        print(f"{name}: {json.loads((folder / 'summary.json').read_text())['target']['server_command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
