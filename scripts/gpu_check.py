"""The prepared GPU check (issues 20 and 28), run by scripts/gpu_check.sh in one device call. Within a budget counted
from the shell's start (the carried wheels' install included): the study's modes first, then llmopt's other modes
(the cells of experiments/gpu-bench.yaml, each with its share of documents and of the time, and its roofline as soon
as it ends), then `pytest -m gpu` over a list of GPU tests in order of value for the time left, then the report;
everything packed into at most 8 files in the folder named on the command line, since that is all that comes back
from a lent GPU machine. docs/gpu-check.md says how to run it there and how its results are committed.

`--dry-run` prints the plan (each step, its share, its documents, the total against the budget) and runs nothing.
The shares are estimates, with a margin, until a check has run on a GPU; then that run's own timings (the steps.json
committed with its results) replace them, and the plan says which figure is which.

Nothing finished is lost to a kill: check.md, check.csv, steps.json and the log in the output folder are rewritten
after every step, and pytest, stopped at the end of its share by SIGINT, still writes its JUnit file and summary. A
cell that fails, runs out of memory or out of its time is a row, never the end of the check; one whose turn comes when
its share no longer fits is a row too ("not run"). Exit code 0 once the files are written (also after SIGTERM), 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import ast
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
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "experiments" / "gpu-bench.yaml"


@dataclass(frozen=True)
class CellShare:
    name: str
    docs: int
    estimate_s: float  # the whole cell on an H100 or H200, its start included: the arithmetic is `why`
    timeout_s: int
    why: str
    study: bool = False  # a mode the study measured


# The estimates (an H100 or H200, Llama-2-7B-shaped random weights, the Wikilingua prompt lengths, 300 new tokens a
# document), until a check has measured them. A cell starts in about 15 s (the sweep's Python and the run's, torch,
# transformers, CUDA, 6.7 B random weights made on the GPU and, for the quantizing modes, quantized). transformers'
# eager decoding is bound by kernel launches, not by the bandwidth floor of 13.5 GB / 4.8 TB/s = 2.8 ms: about 25 ms
# a step, so one 300-token generate takes about 7.5 s at any small batch. `auto` probes 1, 2, 4, ... up to the cell's
# documents (300 tokens each) before the timed loop: N documents cost log2(N) + 2 generates.
TRANSFORMERS_TIER = (
    # The study's modes first (Llama-2-7B through transformers, bitsandbytes 4-bit and 8-bit), so that a slow machine
    # loses llmopt's own rows and the tests, not these.
    CellShare("default-b1", 2, 30, 60, "2 generates x 7.5 s + 15", study=True),
    CellShare("4bit-bauto", 2, 52, 75, "3 generates x 10.5 s (NF4, ~35 ms a step) + 20", study=True),
    CellShare("8bit-bauto", 2, 74, 100, "3 generates x 18 s (LLM.int8, ~60 ms a step) + 20", study=True),
    CellShare("default-bauto", 4, 45, 75, "probes 1, 2, 4 + one batch: 4 generates x 7.5 s + 15"),
    CellShare("compile", 2, 78, 150, "compiling ~60 s + 2 x 300 steps x 5 ms + 15"),
    CellShare("torchao-int8-bauto", 2, 47, 75, "3 generates x 9 s (dequantized at each call) + 20"),
    CellShare("torchao-int4-bauto", 2, 47, 75, "3 generates x 7.5 s (tinygemm) + 25"),
)
# With --cells only. transformers (since 4.36, with torch 2.1.1 or newer) gives Llama SDPA attention by default, so
# this cell would measure default-bauto's run again (docs/strategies.md); each summary's engine.attn_implementation
# says which attention ran.
OPTIONAL_CELLS = (CellShare("sdpa-bauto", 2, 37, 60, "3 generates x 7.5 s + 15"),)
# vLLM batches every document itself: 16 documents of 300 tokens decode in about 300 steps of ~10 ms (3 s); the
# engine's start (profiling, torch.compile, CUDA graphs) is most of a cell, about 60 to 90 s. Out of reach in one
# session (docs/gpu-check.md): kept for a session with more device time.
VLLM_TIER = tuple(CellShare(n, 16, 90, 150, "engine start 60-90 s + 300 steps x 10 ms") for n in
                  ("vllm", "vllm-awq", "vllm-gptq", "vllm-fp8"))  # fmt: skip
# On a CPU (tests/test_gpu_check.py): the modes a CPU runs quickly, with the tiny model.
CPU_CELLS = ("default-b1", "default-bauto", "torchao-int8-bauto")
CPU_DOCS, CPU_NEW_TOKENS, CPU_TIMEOUT_S, CPU_CELL_ESTIMATE_S = 2, 4, 300, 40


@dataclass(frozen=True)
class GpuTest:
    node: str
    estimate_s: float
    why: str


# What `pytest -m gpu` runs in the check, in order of value: pytest runs them in this order and is stopped at the end
# of its share, so the first ones are the ones that fit. Each run of the tiny model costs a Python with torch and CUDA,
# about 8 s; a torch.compile with CUDA graphs about 30 s more.
GPU_TESTS = (
    GpuTest("tests/test_cuda_measure.py::test_fork_still_uses_cuda_after_the_vllm_checks", 8,
            "the CUDA checks through NVML leave fork usable (what vLLM's engine core needs)"),
    GpuTest("tests/test_gpu.py::test_peaks_leave_out_memory_freed_after_loading", 12,
            "4-bit weights made in 16 bits: the copy is freed before the memory peaks start"),
    GpuTest("tests/test_gpu.py::test_torchao_int4_packs_two_weights_a_byte_on_cuda", 15,
            "tinygemm packs two weights a byte and computes in bf16"),
    GpuTest("tests/test_gpu.py::test_fp8_modes_on_ada_or_hopper", 12, "torchao-fp8 on Hopper, which no cell runs"),
    GpuTest("tests/test_cuda_modes.py::test_torchao_int8_on_a_gpu_is_labelled_eager", 10,
            "eager torchao-int8 says so, and its roofline counts the 16-bit copy"),
    GpuTest("tests/test_gpu.py::test_strategy_on_cuda_measures_memory_and_time", 40,
            "default, sdpa, 8bit, 4bit: memory peaks and timings on CUDA (flash-attn skips)"),
    GpuTest("tests/test_cuda_modes.py::test_compiled_decode_records_its_cuda_graphs_before_the_clock", 45,
            "compile records its CUDA graphs in the warm-up, none while timed"),
    GpuTest("tests/test_cuda_modes.py::test_torchao_int4_on_this_gpu_runs_or_is_unavailable", 10,
            "torchao-int4 by compute capability"),
    GpuTest("tests/test_gpu.py::test_random_weights_auto_batch_and_compile_on_cuda", 60,
            "random weights, the batch probe and compile on the tiny model (the cells ran them at 7B)"),
)  # fmt: skip
# GPU tests the check leaves out, and why (tests/test_gpu_check.py holds every `gpu` test to one list or the other).
NO_VLLM, NO_LLAMACPP = "needs vLLM, carried only in its tier", "needs llama-cpp-python built with CUDA, not carried"
LEFT_OUT_TESTS = {
    "tests/test_gpu.py::test_vllm_on_cuda_reports_device_memory_not_the_allocator": NO_VLLM,
    "tests/test_gpu.py::test_llamacpp_offloads_every_layer": NO_LLAMACPP,
    "tests/test_cuda_measure.py::test_a_gguf_run_on_cuda_is_measured_through_nvml": NO_LLAMACPP,
    "tests/test_cuda_measure.py::test_vllm_on_cuda_reports_weights_and_kv_cache_below_its_reservation": NO_VLLM,
    "tests/test_cuda_measure.py::test_vllm_fp8_on_cuda_reports_one_byte_linear_weights": NO_VLLM,
    "tests/test_cuda_measure.py::test_a_mig_slice_is_named_and_gets_no_roofline": "needs a MIG slice; lent GPUs are whole",
}

BUDGET_S = 540  # of a device call's 600 s: the rest for the archive's way back and a late stop
INSTALL_ESTIMATE_S = 15  # pip install --no-index of the carried wheels (55 MiB), before this script starts
RESERVE_S = 25  # kept from the start: the rooflines (a few seconds, between the cells), the report (~10 s), the
# table and the packing
PYTEST_START_S = 10  # pytest's own start: collecting the test files, the tiny model built once
PYTEST_FLOOR_S = 30  # the tests' share however long the cells took: pytest's start and the first tests of the list
PYTEST_MAX_S = 150
MARGIN = {"estimate": 0.20, "measured": 0.10}  # on each step's expected time, until (and once) a GPU has run it
CELL_STOP_S = 30  # a cell stopped at its timeout writes its partial summary within this, or is killed
PYTEST_STOP_S = 15  # pytest, sent SIGINT, writes its JUnit file and summary within this
MAX_FILES, MAX_FILE_BYTES = 8, 16 << 20  # what comes back from the device machine


class Stopped(Exception):
    """The check itself was asked to stop (SIGTERM, Ctrl-C): it writes its files and leaves."""


# --- the plan ------------------------------------------------------------------------------------------------------


@dataclass
class Measured:
    """A GPU check's own timings (its steps.json), which replace the estimates."""

    source: str  # "measured on <device>, <date>"
    steps: dict[str, float]  # step name -> seconds, for the steps that finished
    tests: dict[str, float]  # test node (file::function) -> seconds


def load_measured(path: Path | None, results: Path) -> Measured | None:
    """`path`, or the newest steps.json of a GPU check under `results`: only a GPU's timings replace estimates."""
    found = []
    for candidate in [path] if path else sorted(results.glob("gpu-check-*/steps.json")):
        data = read(candidate)
        if data and data.get("device"):
            found.append(data)
    if not found:
        return None
    data = max(found, key=lambda d: d.get("date") or "")
    steps = {s["name"]: s["seconds"] for s in data.get("steps", []) if s.get("returncode") == 0 and not s.get("timed_out")}
    return Measured(f"measured on {data['device']}, {data.get('date', '?')}", steps, data.get("tests") or {})


@dataclass
class PlanStep:
    name: str
    expected_s: float
    source: str  # "estimate: <arithmetic>" or "measured on ..."
    docs: int | None = None
    timeout_s: float | None = None

    @property
    def margin_s(self) -> float:
        return self.expected_s * MARGIN["estimate" if self.source.startswith("estimate") else "measured"]

    @property
    def share_s(self) -> float:
        return self.expected_s + self.margin_s


@dataclass
class Plan:
    budget_s: float
    install: PlanStep | None
    cells: list[PlanStep]
    tests: list[tuple[GpuTest, float, str]]  # each test, its expected seconds and their source, in the order they run
    measured: Measured | None
    left_out_cells: list[tuple[str, str]] = field(default_factory=list)

    @property
    def fixed_s(self) -> float:
        """Everything but the tests: install and cells with their margins, and the reserve."""
        return (self.install.share_s if self.install else 0) + sum(c.share_s for c in self.cells) + RESERVE_S

    @property
    def tests_share_s(self) -> float:
        """What the tests get if every step takes its share: what is left, up to PYTEST_MAX_S."""
        return max(0.0, min(PYTEST_MAX_S, self.budget_s - self.fixed_s)) if self.tests else 0.0

    @property
    def fits(self) -> bool:
        return self.budget_s - self.fixed_s >= (PYTEST_FLOOR_S if self.tests else 0)

    def expected(self, step: str) -> float | None:
        return next((c.expected_s for c in self.cells if c.name == step), None)


def make_plan(args: argparse.Namespace, shares: Sequence[CellShare], measured: Measured | None) -> Plan:
    def timing(step: str, estimate: float, why: str) -> tuple[float, str]:
        if measured and step in measured.steps:
            return measured.steps[step], measured.source
        return estimate, f"estimate: {why}"

    install = None
    if not args.cpu:
        install = PlanStep("install", *timing("install", INSTALL_ESTIMATE_S, "pip install --no-index, 55 MiB of wheels"))
    cells = []
    for share in shares:
        estimate = CPU_CELL_ESTIMATE_S if args.cpu else share.estimate_s
        seconds, source = timing(f"cell {share.name}", estimate, "a 2-core CPU" if args.cpu else share.why)
        cells.append(PlanStep(f"cell {share.name}", seconds, source, cell_docs(share, args.cpu), cell_timeout(share, args.cpu)))
    tests = []
    if args.run_tests:
        for node in args.tests:
            known = next((t for t in GPU_TESTS if t.node == node), GpuTest(node, 10, "named with --tests"))
            seconds = measured.tests.get(node) if measured else None
            tests.append((known, seconds if seconds is not None else known.estimate_s,
                          measured.source if seconds is not None else "estimate"))  # fmt: skip
    left_out = []
    if args.cells is None and not (args.cpu or args.vllm):
        left_out = [(c.name, "the same run as default-bauto (SDPA)") for c in OPTIONAL_CELLS]
    return Plan(args.budget_s, install, cells, tests, measured, left_out)


def plan_lines(plan: Plan, args: argparse.Namespace) -> list[str]:
    tier = "the vLLM tier" if args.vllm else "the CPU's modes" if args.cpu else "the transformers tier"
    source = plan.measured.source if plan.measured else "estimates: no GPU check has been measured yet"
    lines = [
        f"Plan: {tier}, model {os.environ.get('MODEL') or ('tiny' if args.cpu else 'llama-2-7b')} (random weights), "
        f"{CPU_NEW_TOKENS if args.cpu else 300} new tokens a document; budget {plan.budget_s:.0f} s from the shell's start.",
        f"Timings: {source}. Each step's share is its expected time plus a margin: "
        f"{MARGIN['estimate']:.0%} on an estimate (no GPU has confirmed it), {MARGIN['measured']:.0%} on a measured time.",
        "",
        f"{'#':>2}  {'step':<26} {'docs':>4} {'expected s':>10} {'margin s':>8} {'share s':>7} {'stop at s':>9}  source",
    ]
    rows: list[tuple[str, str, str, str, str, str, str]] = []
    steps = ([plan.install] if plan.install else []) + plan.cells
    for step in steps:
        study = " *" if any(step.name == f"cell {c.name}" and c.study for c in TRANSFORMERS_TIER) else ""
        rows.append((step.name + study, str(step.docs or "-"), f"{step.expected_s:.0f}", f"{step.margin_s:.0f}",
                     f"{step.share_s:.0f}", f"{step.timeout_s:.0f}" if step.timeout_s else "-", step.source))  # fmt: skip
    if plan.tests:
        rows.append((f"pytest -m gpu ({len(plan.tests)} tests)", "-", "-", "-", f"{plan.tests_share_s:.0f}",
                     f"{PYTEST_MAX_S}", f"what is left, at least {PYTEST_FLOOR_S} s; stopped by SIGINT"))  # fmt: skip
    rows.append(("report, table, packing", "-", f"{RESERVE_S}", "-", f"{RESERVE_S}", "-", "kept from the start"))
    for k, (name, docs, expected, margin, share, stop, src) in enumerate(rows, start=1):
        lines.append(f"{k:>2}  {name:<26} {docs:>4} {expected:>10} {margin:>8} {share:>7} {stop:>9}  {src}")
    total = plan.fixed_s + plan.tests_share_s
    verdict = f"fits, the tests get {plan.tests_share_s:.0f} s (at least {PYTEST_FLOOR_S})" if plan.tests else "fits"
    if not plan.fits:
        verdict = f"does NOT fit: {plan.fixed_s - plan.budget_s + (PYTEST_FLOOR_S if plan.tests else 0):.0f} s over"
    lines += [f"    {'total':<26} {'':>4} {'':>10} {'':>8} {total:>7.0f}            of {plan.budget_s:.0f} s: {verdict}",
              "    (* the study's modes; a cell starts only if its expected time still fits, the tests' least share and "
              "the reserve kept)"]  # fmt: skip
    if plan.tests:
        lines += ["", f"GPU tests in the order they run (pytest starts in about {PYTEST_START_S} s; "
                  f"'fits' within the planned {plan.tests_share_s:.0f} s, the rest if the cells leave time):"]  # fmt: skip
        used = PYTEST_START_S
        for test, seconds, src in plan.tests:
            used += seconds
            fits = "fits" if used <= plan.tests_share_s else "later"
            lines.append(f"  {fits:<5} {seconds:>4.0f} s  {test.node}  ({test.why}; {src})")
    unplaced = sorted(set(gpu_marked_tests()) - {t.node for t in GPU_TESTS} - set(LEFT_OUT_TESTS))
    lines += ["", "Left out:"]
    lines += [f"  cell {name}: {why}" for name, why in plan.left_out_cells]
    if args.vllm:
        lines.insert(2, "Note: this run is the last of five device calls (the four before carry vLLM's 60 MiB bundles) on "
                     "a machine kept warm: out of reach in a 15-minute session (docs/gpu-check.md).")  # fmt: skip
    else:
        lines.append("  the vLLM tier: five device calls (four 60 MiB bundles, then its run) on a machine kept warm, "
                     "more than a session's 15 minutes after this one (docs/gpu-check.md)")  # fmt: skip
    lines += [f"  {node}: {why}" for node, why in LEFT_OUT_TESTS.items()]
    lines += [f"  {node}: a GPU test in neither list of scripts/gpu_check.py" for node in unplaced]
    return lines


def gpu_marked_tests(folder: Path = ROOT / "tests") -> Iterator[str]:
    """Every test function under tests/ marked `gpu`, itself or through its module's pytestmark, as file::name."""
    for path in sorted(folder.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_marked = any(
            isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets)
            and "mark.gpu" in ast.unparse(node.value) for node in tree.body
        )  # fmt: skip
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            if module_marked or any("mark.gpu" in ast.unparse(d) for d in node.decorator_list):
                yield f"tests/{path.name}::{node.name}"


def cell_docs(share: CellShare, cpu: bool) -> int:
    return min(share.docs, CPU_DOCS) if cpu else share.docs


def cell_timeout(share: CellShare, cpu: bool) -> int:
    # a 2-core CPU shared with other work takes longer to start a cell than an H200 host
    return max(share.timeout_s, CPU_TIMEOUT_S) if cpu else share.timeout_s


# --- the check -----------------------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    seconds: float
    returncode: int | None
    timed_out: bool = False
    note: str = ""
    share_s: float | None = None


class Check:
    def __init__(self, args: argparse.Namespace, plan: Plan, shares: Sequence[CellShare]) -> None:
        self.args, self.plan, self.shares = args, plan, list(shares)
        # The budget counts from the shell's start (gpu_check.sh), so that the wheels' install is inside it.
        started_epoch = float(os.environ.get("GPU_CHECK_STARTED") or time.time())
        already = min(max(0.0, time.time() - started_epoch), args.budget_s)
        self.started = time.monotonic() - already
        self.deadline = self.started + args.budget_s
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.out / "gpu-check.log", "a", encoding="utf-8")  # noqa: SIM115 - open for the whole check
        self.log_lock = threading.Lock()
        self.steps: list[Step] = []
        self.tests: dict[str, float] = {}  # each test's seconds, from pytest's JUnit file
        self.gpu = gpu_name()
        self.model = os.environ.get("MODEL") or ("tiny" if args.cpu else "llama-2-7b")
        self.date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.name = args.name or f"gpu-check-{slug(self.gpu or 'cpu')}-{self.date[:10]}"
        self.results = (args.results or ROOT / "results" / self.name).resolve()
        self.results.mkdir(parents=True, exist_ok=True)

    # --- output -------------------------------------------------------------------------------------------------
    def write_log(self, text: str) -> None:
        with self.log_lock:
            self.log_file.write(text)
            self.log_file.flush()

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f} s] {text}"
        print(line, flush=True)
        self.write_log(line + "\n")

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, step: Step) -> Step:
        self.steps.append(step)
        self.write_table()
        return step

    def run(self, name: str, cmd: list[str], timeout_s: float, log: Path | None = None, share_s: float | None = None,
            interrupt: bool = False) -> Step:  # fmt: skip
        """A command in a process group of its own, its output streamed into the log (and `log`) as it comes, so that
        a kill leaves what it printed. At its timeout it is stopped: SIGTERM to the group, or with `interrupt` SIGINT
        to the command alone (pytest then writes its JUnit file and summary), then SIGKILL. Never raises, but
        `Stopped`: a step that fails is a row."""
        self.say(f"{name}: {' '.join(cmd[1:] if cmd[0] == sys.executable else cmd)} (up to {timeout_s:.0f} s)")
        started = time.monotonic()
        last: list[str] = []
        proc: subprocess.Popen[str] | None = None
        copier: threading.Thread | None = None
        timed_out, stopped = False, False
        try:  # a stop that lands while the command starts is a stop of this step too (a row, the command ended)
            try:
                # SIGINT as Python's default (KeyboardInterrupt): a background shell may have left it ignored
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        errors="replace", start_new_session=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
            except OSError as exc:
                step = self.record(Step(name, 0.0, None, note=f"could not start: {exc}", share_s=share_s))
                self.say(f"{name}: {step.note}")
                return step
            copier = threading.Thread(target=self._copy_output, args=(proc.stdout, log, last), daemon=True)
            copier.start()
            proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            timed_out = True
            assert proc is not None
            stop_process(proc, signal.SIGINT if interrupt else signal.SIGTERM, PYTEST_STOP_S if interrupt else 20)
        except (Stopped, KeyboardInterrupt):
            stopped = True
            if proc is not None:
                stop_process(proc, signal.SIGTERM, 5)
        if copier is not None:
            copier.join(timeout=10)
        note = "stopped at its time limit; " if timed_out else "stopped with the check; " if stopped else ""
        code = proc.returncode if proc is not None else None
        step = self.record(Step(name, time.monotonic() - started, code, timed_out, note + (last or [""])[-1][-300:],
                                share_s))  # fmt: skip
        self.say(f"{name}: exit code {code} after {step.seconds:.0f} s: {step.note}")
        if stopped:
            raise Stopped
        return step

    def _copy_output(self, stream: IO[str] | None, log: Path | None, last: list[str]) -> None:
        if stream is None:
            return
        with open(log, "w", encoding="utf-8") if log else contextlib.nullcontext() as own:
            for line in stream:
                self.write_log(line)
                if own is not None:
                    own.write(line)
                    own.flush()
                if line.strip():
                    last[:] = [line.strip()]

    # --- the steps ----------------------------------------------------------------------------------------------
    def install(self) -> None:
        """The wheels' install, done by gpu_check.sh before this script: its time and output, as a step."""
        seconds = os.environ.get("GPU_CHECK_INSTALL_S")
        if seconds is None:
            return
        text = ""
        with contextlib.suppress(OSError):
            text = Path(os.environ.get("GPU_CHECK_INSTALL_LOG", "")).read_text(errors="replace")
        self.write_log(text)
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        code = int(os.environ.get("GPU_CHECK_INSTALL_RC") or 0)
        share = self.plan.install.share_s if self.plan.install else None
        self.record(Step("install", float(seconds), code, note=last[-300:], share_s=share))
        self.say(f"install: exit code {code} after {float(seconds):.0f} s: {last[-300:]}")

    def experiment(self, timeouts: dict[str, int]) -> Path:
        """experiments/gpu-bench.yaml with each chosen cell's share of documents and its timeout."""
        spec = yaml.safe_load(BENCH.read_text())
        spec["name"] = self.name
        spec["hardware"] = self.gpu or "CPU"
        spec["model"] = self.model
        if self.args.cpu:
            spec["generation"]["max_new_tokens"] = CPU_NEW_TOKENS
        wanted = {s.name: s for s in self.shares}
        cells = []
        for raw in spec["cells"]:
            sizes = raw.get("batch_size", 1)
            for size in sizes if isinstance(sizes, list) else [sizes]:
                name = "-".join(p for p in (raw["strategy"], f"b{size}" if isinstance(sizes, list) or size != 1 else "") if p)
                if name not in wanted:
                    continue
                # the experiment names a cell `name`, plus -b<size> where the size is not 1
                base = name if size == 1 else name.removesuffix(f"-b{size}")
                cell = {**raw, "batch_size": size, "name": base, "timeout_s": timeouts[name]}
                cell["options"] = {**(raw.get("options") or {}), "limit": cell_docs(wanted[name], self.args.cpu)}
                cells.append(cell)
        spec["cells"] = cells
        path = self.results / ".gpu-check-experiment.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    def cells(self) -> None:
        """The cells in the plan's order. A cell starts only if its expected time fits in what is left once the
        reserve, the tests' least share and the time to stop it are kept; its timeout is cut to that."""
        timeouts = {s.name: cell_timeout(s, self.args.cpu) for s in self.shares}
        for share, planned in zip(self.shares, self.plan.cells, strict=True):
            name = share.name
            # what the cell may use: the time left, less the reserve, the tests' least share and its own stop
            usable = self.left_s() - RESERVE_S - (PYTEST_FLOOR_S if self.args.run_tests else 0) - CELL_STOP_S
            if usable < planned.expected_s:
                note = f"not run: {max(usable, 0):.0f} s left, about {planned.expected_s:.0f} s needed"
                self.record(Step(f"cell {name}", 0.0, None, note=note, share_s=planned.share_s))
                self.say(f"cell {name}: {note}")
                continue
            # The sweep enforces the cell's timeout (a timed-out cell keeps its finished documents and its partial
            # summary); the check stops the sweep itself only if that fails.
            timeouts[name] = int(min(timeouts[name], usable))
            path = self.experiment(timeouts)
            cmd = [sys.executable, "-m", "llmopt.sweep", str(path), "--out", str(self.results), "--only", name, "--no-report"]
            self.run(f"cell {name}", cmd, timeouts[name] + CELL_STOP_S, share_s=planned.share_s)
            own = self.results / name / "stdout.log"  # the run's own summary lines
            if own.is_file():
                text = own.read_text(errors="replace")
                self.write_log(text)
                print(text, end="", flush=True)
            self.roofline(name)
            self.write_table()

    def pytest(self) -> None:
        """The GPU tests, in order of value, for what is left (at most PYTEST_MAX_S): at the end of its share pytest
        gets SIGINT, so that it still writes its JUnit file and summary."""
        share = min(self.args.pytest_max_s, self.left_s() - RESERVE_S)
        planned = self.plan.tests_share_s
        if share < PYTEST_START_S:
            self.record(Step("pytest -m gpu", 0.0, None, note=f"not run: {max(share, 0):.0f} s left", share_s=planned))
            return
        junit = self.results / "pytest-gpu.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-rfEs", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *self.args.tests]  # fmt: skip
        self.run("pytest -m gpu", cmd, share - PYTEST_STOP_S, self.results / "pytest-gpu.log", planned, interrupt=True)
        self.tests = junit_times(junit)

    def roofline(self, name: str) -> None:
        """The least time of a cell's own documents and batches on this GPU (or --roofline-gpu): the floor per decode
        step beside the step the cell measured. `llmopt roofline` in this process (it needs no GPU)."""
        gpu = self.args.roofline_gpu or self.gpu
        summary = read(self.results / name / "summary.json")
        if gpu is None or not summary or not summary.get("n_completed"):
            return
        from llmopt.commands import roofline

        folder = self.results / "roofline"
        folder.mkdir(exist_ok=True)
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
        if code == 0:
            (folder / f"{name}.json").write_text(printed.getvalue())
        self.steps.append(Step(f"roofline {name}", time.monotonic() - started, code, note=error))
        self.say(f"roofline {name}: {' '.join(argv)}: exit code {code}")

    def report(self) -> None:
        limit = min(120.0, self.left_s() - 5)
        if limit < 5:
            self.record(Step("report", 0.0, None, note="not run: the check's time was spent"))
            return
        self.run("report", [sys.executable, "-m", "llmopt.report", str(self.results)], limit)

    # --- the files ----------------------------------------------------------------------------------------------
    def write_table(self) -> None:
        """check.md, check.csv and steps.json, in the results folder and the output folder, after every step: what
        comes back from a check killed part way holds every step that finished."""
        rows = [cell_row(self.results, s.name, self.steps) for s in self.shares]
        shares_from = self.plan.measured.source if self.plan.measured else "estimates"
        with open(self.results / "check.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["cell"])
            writer.writeheader()
            writer.writerows(rows)
        lines = [
            f"# {self.name}",
            "",
            f"Device: {self.gpu or 'CPU'}. Model: {self.model} (random weights). "
            f"Command: `{' '.join(self.args.argv)}`. Budget {self.args.budget_s:.0f} s, used "
            f"{time.monotonic() - self.started:.0f} s. Shares: {shares_from}.",
            "",
            "| cell | status | docs | batch | attention | docs/s | roofline docs/s | % of roofline | ms/step "
            "| floor ms/step | x floor | peak GPU mem GiB | device used GiB | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append("| " + " | ".join(fmt(r[k]) for k in r) + " |")
        lines += ["", "| step | seconds | share s | exit code | note |", "|---|---|---|---|---|"]
        for s in self.steps:
            note = s.note.replace("|", "/").replace("\n", " ")
            share = "" if s.share_s is None else f"{s.share_s:.0f}"
            lines.append(f"| {s.name} | {s.seconds:.0f} | {share} | {s.returncode} | {note} |")
        (self.results / "check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        steps = {"name": self.name, "device": self.gpu, "date": self.date, "budget_s": self.args.budget_s,
                 "command": " ".join(self.args.argv), "steps": [asdict(s) for s in self.steps], "tests": self.tests}  # fmt: skip
        (self.results / "steps.json").write_text(json.dumps(steps, indent=1) + "\n")
        for name in ("check.md", "check.csv", "steps.json"):
            copy_atomically(self.results / name, self.out / name)

    def print_table(self) -> None:
        print((self.results / "check.md").read_text().split("\n", 4)[-1], end="", flush=True)

    def pack(self) -> list[Path]:
        """The results folder as one archive (split if over 16 MiB) beside the log, check.md, check.csv and
        steps.json; then copies of report.md and summary.csv while fewer than 8 files are there."""
        archive = self.out / f"{self.name}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(self.results, arcname=self.name)
        if archive.stat().st_size > MAX_FILE_BYTES:
            split(archive, MAX_FILE_BYTES - (1 << 20))
        for name in ("report.md", "summary.csv"):
            if (self.results / name).is_file() and len(list(self.out.iterdir())) < MAX_FILES:
                shutil.copy(self.results / name, self.out / name)
        self.log_file.close()
        files = sorted(p for p in self.out.iterdir() if p.is_file())
        too_big = [p.name for p in files if p.stat().st_size > MAX_FILE_BYTES]
        if len(files) > MAX_FILES or too_big:
            print(f"gpu_check: warning: {len(files)} files in {self.out}, over 16 MiB: {too_big}", file=sys.stderr)
        return files


def cell_row(results: Path, name: str, steps: Sequence[Step]) -> dict[str, Any]:
    s = read(results / name / "summary.json") or {}
    verdict = read(results / name / "sweep_cell.json") or {}
    step = next((st for st in steps if st.name == f"cell {name}"), None)
    # the sweep's verdict where it gave one (a timeout, say, even after every document finished), else the run's own;
    # without either, what the check knows: not run for lack of time, stopped with the check, or not yet reached
    status = verdict.get("status") or s.get("status")
    if status is None:
        status = "pending" if step is None else "stopped" if "stopped with the check" in step.note else "not run"
    roof = read(results / "roofline" / f"{name}.json") or {}
    step_ms = None
    if s.get("generate_s") and s.get("n_completed") and s.get("output_tokens_mean"):
        # static batches: the timed loop's decode steps; engine batching: one batch of every document
        batches = math.ceil(s["n_completed"] / (s.get("batch_size") or s["n_completed"]))
        step_ms = 1000 * s["generate_s"] / (batches * s["output_tokens_mean"])
    floor = roof.get("decode_floor_ms_per_token")
    errors = s.get("errors") or verdict.get("errors") or ([step.note] if step and not s and not verdict else [])
    gib = 1 << 30
    return {
        "cell": name,
        "status": status,
        "docs": s.get("n_completed"),
        "batch": s.get("batch_size"),
        "attention": (s.get("engine") or {}).get("attn_implementation"),
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


def junit_times(path: Path) -> dict[str, float]:
    """Each test function's seconds from pytest's JUnit file (its parameters added up), as file::function."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    times: dict[str, float] = {}
    for case in root.iter("testcase"):
        classname, name = case.get("classname"), case.get("name")
        if not classname or not name:  # the test a SIGINT cut short has neither
            continue
        node = f"{classname.replace('.', '/')}.py::{name.split('[')[0]}"
        times[node] = times.get(node, 0.0) + float(case.get("time") or 0)
    return times


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


def copy_atomically(source: Path, target: Path) -> None:
    """A kill during the copy leaves the previous version, never half a file."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


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


def stop_process(proc: subprocess.Popen[Any], sig: int, grace_s: float) -> None:
    """SIGTERM to the group, or SIGINT to the command alone (it ends its own children); SIGKILL to the group after
    `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        if sig == signal.SIGINT:
            os.kill(proc.pid, sig)
        else:
            os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
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


def chosen_cells(args: argparse.Namespace) -> list[CellShare]:
    known = {s.name: s for s in (*TRANSFORMERS_TIER, *OPTIONAL_CELLS, *VLLM_TIER)}
    if args.cells is not None:
        names = args.cells.split()
    elif args.cpu:
        names = list(CPU_CELLS)
    else:
        names = [s.name for s in (VLLM_TIER if args.vllm else TRANSFORMERS_TIER)]
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"gpu_check: unknown cell {unknown[0]!r} (cells: {', '.join(known)})", file=sys.stderr)
        raise SystemExit(2)
    return [known[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, nargs="?", help="the folder for the files that come back (at most 8, 16 MiB each)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    p.add_argument("--vllm", action="store_true", help="the vLLM tier (vllm, vllm-awq, vllm-gptq, vllm-fp8)")
    p.add_argument("--cpu", action="store_true", help=f"the CPU's modes, {CPU_DOCS} documents, {CPU_NEW_TOKENS} tokens")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"the whole check's time (default {BUDGET_S} s)")
    p.add_argument("--cells", help="only these cells, in this order (space-separated names; '' for none)")
    p.add_argument("--tests", nargs="*", help="what pytest -m gpu runs, in order (default: the plan's list; --cpu: "
                   "tests/test_gpu.py)")  # fmt: skip
    p.add_argument("--no-tests", dest="run_tests", action="store_false", help="skip pytest -m gpu (the vLLM tier)")
    p.add_argument("--pytest-max-s", type=float, default=PYTEST_MAX_S, help=f"pytest's most (default {PYTEST_MAX_S} s)")
    p.add_argument("--timings", type=Path, help="a GPU check's steps.json whose timings replace the estimates "
                   "(default: the newest under results/)")  # fmt: skip
    p.add_argument("--roofline-gpu", help="compute the rooflines for this GPU (default: the one found)")
    p.add_argument("--results", type=Path, help="the results folder (default results/gpu-check-<gpu>-<date>)")
    p.add_argument("--name", help="its name, and the archive's top folder")
    args = p.parse_args(argv)
    if args.out is None and not args.dry_run:
        p.error("the output folder is needed (or --dry-run)")
    args.argv = ["scripts/gpu_check.sh", *argv]
    if args.tests is None:
        args.tests = ["tests/test_gpu.py"] if args.cpu else [t.node for t in GPU_TESTS]
    shares = chosen_cells(args)
    plan = make_plan(args, shares, load_measured(args.timings, ROOT / "results"))
    if args.dry_run:
        print("\n".join(plan_lines(plan, args)))
        return 0

    def stop(signum: int, frame: Any) -> None:
        raise Stopped

    signal.signal(signal.SIGTERM, stop)
    check = Check(args, plan, shares)
    check.say(f"{check.name}: device {check.gpu or 'CPU'}, budget {args.budget_s:.0f} s, results {check.results}")
    check.write_log("\n".join(plan_lines(plan, args)) + "\n\n")
    try:
        check.install()
        check.write_table()
        check.cells()
        if args.run_tests:
            check.pytest()
        check.report()
    except (Stopped, KeyboardInterrupt):
        check.say("stopped: writing the files")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    check.write_table()
    check.print_table()
    files = check.pack()
    print(f"gpu_check: {len(files)} files in {args.out}: {', '.join(f'{f.name} ({f.stat().st_size} B)' for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
