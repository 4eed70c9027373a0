"""Successive halving against the exhaustive grid it replaces (a script that prints numbers, not a test): the same
`llmopt tune` search run twice on the same space, once with `--search halving` and once with `--search grid`, one after
the other on this machine. Do they choose the same winner (or one within the grid's own noise of it), and how long does
each speed stage take? docs/tune.md reports the CPU demo's figures.

    .venv/bin/python scripts/tune_vs_grid.py --out /tmp/tvg -- --model smollm2-135m --space experiments/tune-cpu-demo.yaml \
        --slo ttft=2s@p90,tpot=150ms@p90 --prompt chat --max-new-tokens 48 --rung-requests 4,22 --search-max 16

The grid runs every configuration at the last rung's budget; both run the same drift screen and gate, so the speed
stage (tune.json's stage_seconds) is what the search method changes. The winners agree when the halving's winner is the
grid's, or when the grid measured it within the tie noise of the grid's winner (a tie the grid itself would have
decided for the simpler configuration).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(method: str, out: Path, tune_args: list[str]) -> tuple[dict, float]:
    folder = out / method
    cmd = [sys.executable, "-m", "llmopt.tune", *tune_args, "--search", method, "--out", str(folder)]
    if (folder / "tune.json").is_file():
        cmd.append("--resume")
    print(f"$ {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"llmopt tune --search {method} failed (exit code {done.returncode})")
    return json.loads((folder / "tune.json").read_text()), time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="a folder for the two searches")
    p.add_argument("tune_args", nargs=argparse.REMAINDER, help="-- then the llmopt tune arguments both searches share")
    args = p.parse_args()
    tune_args = args.tune_args[1:] if args.tune_args[:1] == ["--"] else args.tune_args
    halving, halving_s = run("halving", args.out, tune_args)
    grid, grid_s = run("grid", args.out, tune_args)
    by_key = {p["key"]: p for p in grid["points"]}
    hw, gw = (halving.get("winner") or {}).get("key"), (grid.get("winner") or {}).get("key")
    noise = grid.get("tie_noise") or 0.0
    best = (grid.get("winner") or {}).get("throughput")
    mine = (by_key.get(hw) or {}).get("throughput")
    tied = bool(best and mine and mine >= best * (1 - noise))
    agree = hw == gw or tied
    speed_h, speed_g = halving["stage_seconds"]["speed"], grid["stage_seconds"]["speed"]
    print(f"halving winner: {hw}\ngrid winner:    {gw}")
    if hw != gw:
        print(f"  the grid measured the halving's winner at {mine} against its winner's {best} "
              f"({'within' if tied else 'outside'} the tie noise of {noise:.0%})")  # fmt: skip
    print(f"agree: {'yes' if agree else 'NO'}")
    print(f"speed stage: halving {speed_h:.0f} s, grid {speed_g:.0f} s, ratio {speed_h / speed_g:.2f}")
    print(f"whole search: halving {halving_s:.0f} s, grid {grid_s:.0f} s, ratio {halving_s / grid_s:.2f}")
    for name, summary in (("halving", halving), ("grid", grid)):
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in summary["stage_seconds"].items())
        print(f"  {name}: {stages}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
