"""The prepared GPU check (issue 20), run by scripts/gpu_check.sh: within a time budget, `pytest -m gpu`, then the
study's modes on a few documents each (the cells of experiments/gpu-bench.yaml, each with its share of documents
and of the time), the roofline of each cell, and the report; everything packed into at most 8 files in the folder
named on the command line, since that is all that comes back from a lent GPU machine. docs/gpu-check.md says how
to run it there and how its results are committed.

A cell that fails, runs out of memory or of its time is a row, never the end of the check; a cell whose turn comes
after the budget is spent is a row too ("not run"). Exit code 0 once the files are written, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "experiments" / "gpu-bench.yaml"

# Each cell's share on an H200 with Llama-2-7B-shaped random weights, 300 new tokens per document (the budget is 540 s:
# install 10, pytest -m gpu up to 150, cells about 330, roofline, report and packing 20; the figures are estimates
# to be replaced by the first measured run). A cell starts in about 15 s (Python, torch, transformers, CUDA, 6.7 B
# random weights made on the GPU and, for the quantizing modes, quantized). transformers' eager decoding is bound
# by kernel launches, not by the bandwidth floor of 13.5 GB / 4.8 TB/s = 2.8 ms: about 25 ms a step, so one
# 300-token generate takes about 7.5 s at any small batch. `auto` probes 1, 2, 4, ... up to the cell's documents
# (300 tokens each) before the timed loop: N documents cost log2(N) + 2 generates.
#   default-b1     2 docs x 7.5 s                                    = 15 s + 15  ->  30 s (timeout  60)
#   default-bauto  4 docs: probes 1, 2, 4 + one batch = 4 x 7.5 s    = 30 s + 15  ->  45 s (timeout  75)
#   4bit-bauto     2 docs: 3 generates x 10.5 s (NF4, ~35 ms a step) = 32 s + 20  ->  52 s (timeout  75)
#   8bit-bauto     2 docs: 3 generates x 18 s (LLM.int8, ~60 ms)     = 54 s + 20  ->  74 s (timeout 100)
#   compile        2 docs: compiling ~60 s + 2 x 300 x 5 ms          = 63 s + 15  ->  78 s (timeout 150)
#   sdpa-bauto     2 docs: 3 generates x 7.5 s                       = 22 s + 15  ->  37 s (timeout  60)
#   torchao-int8   2 docs: 3 generates x 9 s (dequantized per call)  = 27 s + 20  ->  47 s (timeout  75)
#   torchao-int4   2 docs: 3 generates x 7.5 s (tinygemm)            = 22 s + 25  ->  47 s (timeout  75)
# about 410 s in all: the order puts the study's rows first, so a slow machine loses the torchao rows, not these.
TRANSFORMERS_TIER: dict[str, tuple[int, int]] = {
    "default-b1": (2, 60),
    "default-bauto": (4, 75),
    "4bit-bauto": (2, 75),
    "8bit-bauto": (2, 100),
    "compile": (2, 150),
    "sdpa-bauto": (2, 60),
    "torchao-int8-bauto": (2, 75),
    "torchao-int4-bauto": (2, 75),
}
# vLLM batches every document itself: 16 documents of 300 tokens decode in about 300 steps of ~10 ms (3 s); the
# engine's start (profiling, torch.compile, CUDA graphs) is most of a cell, about 60 to 90 s.
VLLM_TIER: dict[str, tuple[int, int]] = {"vllm": (16, 150), "vllm-awq": (16, 150), "vllm-gptq": (16, 150), "vllm-fp8": (16, 150)}
# On a CPU (tests/test_gpu_check.py): the modes a CPU runs quickly, with the tiny model.
CPU_CELLS = ["default-b1", "default-bauto", "torchao-int8-bauto"]
CPU_DOCS, CPU_NEW_TOKENS, CPU_TIMEOUT_S = 2, 4, 300

PYTEST_S = 150  # the GPU tests of the suite: about a dozen runs of the tiny model, ~10 s each
RESERVE_S = 25  # kept for the rooflines, the report and the packing
MIN_CELL_S = 20  # a cell with less time left is not started
MAX_FILES, MAX_FILE_BYTES = 8, 16 << 20  # what comes back from the device machine


@dataclass
class Step:
    name: str
    seconds: float
    returncode: int | None
    timed_out: bool = False
    note: str = ""


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.deadline = self.started + args.budget_s
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "gpu-check.log"
        self.log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole check
        self.steps: list[Step] = []
        self.gpu = gpu_name()
        self.model = os.environ.get("MODEL") or ("tiny" if args.cpu else "llama-2-7b")
        date = datetime.now(UTC).strftime("%Y-%m-%d")
        self.name = args.name or f"gpu-check-{slug(self.gpu or 'cpu')}-{date}"
        self.results = (args.results or ROOT / "results" / self.name).resolve()
        self.results.mkdir(parents=True, exist_ok=True)

    # --- output -------------------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f} s] {text}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], timeout_s: float, log: Path | None = None) -> Step:
        """A command in a process group of its own, its output in the log (and `log`); stopped at its timeout
        (SIGTERM, then SIGKILL after 20 s). Never raises: a step that fails is a row."""
        self.say(f"{name}: {' '.join(cmd[1:] if cmd[0] == sys.executable else cmd)} (up to {timeout_s:.0f} s)")
        started = time.monotonic()
        timed_out = False
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as output:
            try:
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                step = Step(name, 0.0, None, note=f"could not start: {exc}")
                self.steps.append(step)
                self.say(f"{name}: {step.note}")
                return step
            try:
                proc.wait(timeout=max(1.0, timeout_s))
            except subprocess.TimeoutExpired:
                timed_out = True
                stop_group(proc)
            output.seek(0)
            text = output.read()
        self.log_file.write(text)
        if log is not None:
            log.write_text(text, encoding="utf-8")
        step = Step(name, time.monotonic() - started, proc.returncode, timed_out)
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        step.note = ("stopped at its time limit; " if timed_out else "") + last[-300:]
        self.steps.append(step)
        self.say(f"{name}: exit code {proc.returncode} after {step.seconds:.0f} s: {step.note}")
        return step

    # --- the steps ----------------------------------------------------------------------------------------------
    def pytest(self) -> None:
        tests = self.args.tests or (["tests/test_gpu.py"] if self.args.cpu else ["tests"])
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
               f"--junitxml={self.results / 'pytest-gpu.xml'}", *tests]  # fmt: skip
        self.run("pytest -m gpu", cmd, min(PYTEST_S, self.left_s() - RESERVE_S), self.results / "pytest-gpu.log")

    def experiment(self) -> tuple[Path, list[str], dict[str, int]]:
        """experiments/gpu-bench.yaml with each chosen cell's share of documents and time: (file, cells, timeouts)."""
        spec = yaml.safe_load(BENCH.read_text())
        tier = VLLM_TIER if self.args.vllm else TRANSFORMERS_TIER
        names = self.args.cells.split() if self.args.cells else (CPU_CELLS if self.args.cpu else list(tier))
        budget = {**TRANSFORMERS_TIER, **VLLM_TIER}
        unknown = [n for n in names if n not in budget]
        if unknown:
            raise SystemExit(f"gpu_check: unknown cell {unknown[0]!r} (cells: {', '.join(budget)})")
        spec["name"] = self.name
        spec["hardware"] = self.gpu or "CPU"
        spec["model"] = self.model
        if self.args.cpu:
            spec["generation"]["max_new_tokens"] = CPU_NEW_TOKENS
        timeouts: dict[str, int] = {}
        cells = []
        for raw in spec["cells"]:
            sizes = raw.get("batch_size", 1)
            for size in sizes if isinstance(sizes, list) else [sizes]:
                name = "-".join(p for p in (raw["strategy"], f"b{size}" if isinstance(sizes, list) or size != 1 else "") if p)
                if name not in names:
                    continue
                docs, timeout = budget[name]
                if self.args.cpu:  # a 2-core CPU shared with other work takes longer to start a cell than an H200 host
                    timeout = max(timeout, CPU_TIMEOUT_S)
                # the experiment names a cell `name`, plus -b<size> where the size is not 1
                base = name if size == 1 else name.removesuffix(f"-b{size}")
                cell = {**raw, "batch_size": size, "name": base, "timeout_s": timeout}
                cell["options"] = {**(raw.get("options") or {}), "limit": min(docs, CPU_DOCS) if self.args.cpu else docs}
                cells.append(cell)
                timeouts[name] = timeout
        order = {n: i for i, n in enumerate(names)}
        spec["cells"] = [c for _, c in sorted(zip(timeouts, cells, strict=True), key=lambda pair: order[pair[0]])]
        path = self.results / ".gpu-check-experiment.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path, sorted(timeouts, key=order.__getitem__), timeouts

    def cells(self) -> list[str]:
        path, names, timeouts = self.experiment()
        for name in names:
            left = self.left_s() - RESERVE_S
            if left < MIN_CELL_S:
                self.steps.append(Step(f"cell {name}", 0.0, None, note="not run: the check's time was spent"))
                self.say(f"cell {name}: not run, {left:.0f} s left")
                continue
            # The cell's own timeout is enforced by the sweep (a timed-out cell keeps its finished documents); the
            # check's budget stops the sweep itself, which stops the cell in order.
            cmd = [sys.executable, "-m", "llmopt.sweep", str(path), "--out", str(self.results), "--only", name, "--no-report"]
            self.run(f"cell {name}", cmd, min(timeouts[name] + 30, left))
        return names

    def rooflines(self, names: list[str]) -> None:
        """The least time of each cell's own documents and batches on this GPU (or --roofline-gpu): the floor per
        decode step beside the step the cell measured. `llmopt roofline` in this process (it needs no GPU), once
        per cell."""
        gpu = self.args.roofline_gpu or self.gpu
        if gpu is None:
            self.say("roofline: no GPU named, skipped")
            return
        from llmopt.commands import roofline

        folder = self.results / "roofline"
        folder.mkdir(exist_ok=True)
        for name in names:
            summary = read(self.results / name / "summary.json")
            if not summary or not summary.get("n_completed"):
                continue
            batch = summary.get("batch_size") or summary["n_completed"]  # engine batching: every document at once
            dtype = summary.get("dtype") if summary.get("dtype") in ("float16", "bfloat16", "float32") else "float16"
            argv = ["--gpu", gpu, "--model", summary["model"], "--strategy", summary["strategy"], "--dtype", dtype,
                    "--batch-size", str(batch), "--docs", str(summary["n_completed"]),
                    "--prompt-tokens", str(round(summary["prompt_tokens_mean"])),
                    "--new-tokens", str(round(summary["output_tokens_mean"]))]  # fmt: skip
            started, printed, error = time.monotonic(), io.StringIO(), ""
            try:
                with contextlib.redirect_stdout(printed):
                    code = roofline.entry(argv=argv)
            except SystemExit as exc:  # argparse refusing an argument (its message is on stderr)
                code = exc.code if isinstance(exc.code, int) else 2
            except Exception as exc:  # a roofline that cannot be computed is a row's blank, not the end of the check
                code, error = 1, f"{type(exc).__name__}: {exc}"
            step = Step(f"roofline {name}", time.monotonic() - started, code, note=error)
            if code == 0:
                (folder / f"{name}.json").write_text(printed.getvalue())
            self.steps.append(step)
            self.say(f"roofline {name}: {' '.join(argv)}: exit code {step.returncode}")

    def report(self) -> None:
        self.run("report", [sys.executable, "-m", "llmopt.report", str(self.results)], 120)

    def table(self, names: list[str]) -> Path:
        """check.md and check.csv: each cell against its roofline, and every step with its time."""
        rows = [cell_row(self.results, name) for name in names]
        path = self.results / "check.md"
        with open(self.results / "check.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["cell"])
            writer.writeheader()
            writer.writerows(rows)
        lines = [
            f"# {self.name}",
            "",
            f"Device: {self.gpu or 'CPU'}. Model: {self.model} (random weights). "
            f"Command: `{' '.join(self.args.argv)}`. Budget {self.args.budget_s:.0f} s, used "
            f"{time.monotonic() - self.started:.0f} s.",
            "",
            "| cell | status | docs | batch | docs/s | roofline docs/s | % of roofline | ms/step | floor ms/step "
            "| x floor | peak GPU mem GiB | device used GiB | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append("| " + " | ".join(fmt(r[k]) for k in r) + " |")
        lines += ["", "| step | seconds | exit code | note |", "|---|---|---|---|"]
        for s in self.steps:
            note = s.note.replace("|", "/").replace("\n", " ")
            lines.append(f"| {s.name} | {s.seconds:.0f} | {s.returncode} | {note} |")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print("\n".join(lines[5:]), flush=True)
        return path

    def pack(self) -> list[Path]:
        """The results folder as one archive (split if over 16 MiB), the log, report.md, summary.csv, check.md."""
        archive = self.out / f"{self.name}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(self.results, arcname=self.name)
        if archive.stat().st_size > MAX_FILE_BYTES:
            split(archive, MAX_FILE_BYTES - (1 << 20))
        for name in ("report.md", "summary.csv", "check.md"):
            if (self.results / name).is_file():
                shutil.copy(self.results / name, self.out / name)
        self.log_file.close()
        files = sorted(p for p in self.out.iterdir() if p.is_file())
        too_big = [p.name for p in files if p.stat().st_size > MAX_FILE_BYTES]
        if len(files) > MAX_FILES or too_big:
            print(f"gpu_check: warning: {len(files)} files in {self.out}, over 16 MiB: {too_big}", file=sys.stderr)
        return files


def cell_row(results: Path, name: str) -> dict[str, Any]:
    s = read(results / name / "summary.json") or {}
    verdict = read(results / name / "sweep_cell.json") or {}
    # the sweep's verdict where it gave one (a timeout, say, even after every document finished), else the run's own
    status = verdict.get("status") or s.get("status") or "not run"
    roof = read(results / "roofline" / f"{name}.json") or {}
    step_ms = None
    if s.get("generate_s") and s.get("n_completed") and s.get("output_tokens_mean"):
        # static batches: the timed loop's decode steps; engine batching: one batch of every document
        batches = math.ceil(s["n_completed"] / (s.get("batch_size") or s["n_completed"]))
        step_ms = 1000 * s["generate_s"] / (batches * s["output_tokens_mean"])
    floor = roof.get("decode_floor_ms_per_token")
    errors = s.get("errors") or verdict.get("errors") or []
    gib = 1 << 30
    return {
        "cell": name,
        "status": status,
        "docs": s.get("n_completed"),
        "batch": s.get("batch_size"),
        "docs_per_sec": s.get("docs_per_sec"),
        "roofline_docs_per_sec": s.get("roofline_docs_per_sec"),
        "pct_of_roofline": s.get("pct_of_roofline"),
        "ms_per_step": step_ms,
        "floor_ms_per_step": floor,
        "x_floor": step_ms / floor if step_ms and floor else None,
        "peak_gpu_mem_gib": s["peak_gpu_mem_bytes"] / gib if s.get("peak_gpu_mem_bytes") else None,
        "device_used_gib": s["peak_gpu_device_used_bytes"] / gib if s.get("peak_gpu_device_used_bytes") else None,
        "note": "; ".join(str(e) for e in errors)[:200],
    }


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value).replace("|", "/")


def read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text.removeprefix("NVIDIA ")).strip("-")


def gpu_name() -> str | None:
    """The GPU as nvidia-smi names it, without initializing CUDA in this process (the cells are its children)."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return names[0] if done.returncode == 0 and names else None


def stop_group(proc: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def split(path: Path, size: int) -> list[Path]:
    parts = []
    with open(path, "rb") as f:
        for i in range(MAX_FILES):
            chunk = f.read(size)
            if not chunk:
                break
            part = path.with_name(f"{path.name}.{i:02d}")
            part.write_bytes(chunk)
            parts.append(part)
    path.unlink()
    return parts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the folder for the files that come back (at most 8, 16 MiB each)")
    p.add_argument("--vllm", action="store_true", help="the vLLM tier (vllm, vllm-awq, vllm-gptq, vllm-fp8)")
    p.add_argument("--cpu", action="store_true", help=f"the CPU's modes, {CPU_DOCS} documents, {CPU_NEW_TOKENS} tokens")
    p.add_argument("--budget-s", type=float, default=540, help="the whole check's time (default 540 s)")
    p.add_argument("--cells", help="only these cells, in this order (space-separated names)")
    p.add_argument("--tests", nargs="*", help="what pytest -m gpu collects (default tests/; --cpu: tests/test_gpu.py)")
    p.add_argument("--no-tests", dest="run_tests", action="store_false", help="skip pytest -m gpu (the vLLM tier)")
    p.add_argument("--roofline-gpu", help="compute the rooflines for this GPU (default: the one found)")
    p.add_argument("--results", type=Path, help="the results folder (default results/gpu-check-<gpu>-<date>)")
    p.add_argument("--name", help="its name, and the archive's top folder")
    args = p.parse_args(argv)
    args.argv = ["scripts/gpu_check.sh", *argv]
    check = Check(args)
    check.say(f"{check.name}: device {check.gpu or 'CPU'}, budget {args.budget_s:.0f} s, results {check.results}")
    if args.run_tests:
        check.pytest()
    names = check.cells()
    check.rooflines(names)
    check.report()
    check.table(names)
    files = check.pack()
    print(f"gpu_check: {len(files)} files in {args.out}: {', '.join(f'{f.name} ({f.stat().st_size} B)' for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
