"""The two sides of scripts/bench_engines.py, each loaded once and kept resident: llmopt's run of a strategy, and the
engine alone (a bare llama-cpp-python loop, a bare `model.generate` loop, `vllm bench throughput`'s own engine and
request code). Each side loads, warms up untimed, then times one unit of work per call: a list of document indices
(one document for the engines that generate one sequence at a time, every document for vLLM's batching).

`serve(build)` runs a side as a worker process: it prints one JSON line when the side is loaded and warm, then reads a
JSON list of indices per line from stdin and answers each with one JSON line of timings, until stdin closes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

MODEL = "smollm2-135m"
SEED = 0
CPU_KV_CACHE_BYTES = 1 << 30  # what llmopt's vllm mode gives vLLM on a CPU (llmopt.strategies.vllm)


@dataclass
class Timed:
    seconds: float  # the wall clock of the unit, as the side's own clock covers it
    counters_s: float | None = None  # llama.cpp's own counters (prompt eval + eval), where the side is llama.cpp


Unit = Callable[[list[int]], Timed]


def llmopt_side(strategy: str, dataset: Path, new_tokens: int, sampling: str, options: dict[str, object]) -> Unit:
    """llmopt's run, step by step as `llmopt run` takes them (the same Run: the strategy's fetch and load, the prompts
    it builds, its warm-up and prompt-cache drop), then each unit timed by the statement the run's batcher times:
    `generate_batch` of the unit's prompts between two synchronized clock reads."""
    from llmopt import strategies
    from llmopt.commands import run as _cli  # noqa: F401 - the modules `llmopt run` imports, in its order
    from llmopt.documents.datasets import load_dataset
    from llmopt.measure.timing import SyncedTimer
    from llmopt.runner import batching
    from llmopt.runner.config import RunConfig
    from llmopt.runner.loop import Run
    from llmopt.runner.records import Item, RunDir

    cls = strategies.resolve(strategy)
    seed = SEED if sampling != "greedy" else None
    config = RunConfig(strategy=strategy, model=MODEL, dataset=str(dataset), max_new_tokens=new_tokens,
                       sampling=sampling, seed=seed, ignore_eos=True,
                       options={"trust_remote_code": False, **options})  # fmt: skip
    out = RunDir(Path(tempfile.mkdtemp(prefix="llmopt-side-")))
    out.open(config.identity(), resume=False)
    run = Run(config, cls, load_dataset(str(dataset)), out)
    todo = [Item(i, d, "") for i, d in enumerate(run.docs)]
    # Run's own steps (private to it): the load, the prompts, the warm-up, as its execute() calls them.
    if not run._load(todo, lambda n: None):
        raise SystemExit(f"llmopt's {strategy} did not load")
    items = {it.index: it for it in run._prepare(todo, lambda n: None)}
    if len(items) != len(todo):
        raise SystemExit(f"llmopt's {strategy} skipped documents")
    run._warm_up(batching.split(list(items.values()), len(items) if cls.engine_batching else 1))
    assert run.strategy is not None and run.batcher is not None
    side, params = run.strategy, run.batcher.params

    def unit(indices: list[int]) -> Timed:
        batch = batching.longest_first([items[i] for i in indices])
        side.drop_prompt_cache()  # a unit seen before computes what its first sight computed
        timer = SyncedTimer(side.synchronize)
        with timer:
            generations = side.generate_batch([it.prompt for it in batch], params)
        if any(g.output_tokens != new_tokens for g in generations):
            raise SystemExit(f"llmopt's {strategy} generated other lengths than {new_tokens}")
        latencies = [g.latency_s for g in generations]
        counters = sum(latencies) if strategy == "llamacpp" and None not in latencies else None  # type: ignore[arg-type]
        return Timed(timer.seconds, counters)

    return unit


def llamacpp_alone(prompts: list[str], new_tokens: int) -> Unit:
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

    def one(prompt: str) -> Timed:
        started = time.perf_counter()
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
        seconds = time.perf_counter() - started
        perf = llama_cpp.llama_perf_context(llm.ctx)
        return Timed(seconds, (perf.t_p_eval_ms + perf.t_eval_ms) / 1000)

    one(prompts[-1])  # warm-up, untimed
    return lambda indices: summed([one(prompts[i]) for i in indices])


def generate_alone(prompts: list[str], new_tokens: int) -> Unit:
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

    def one(prompt: str) -> Timed:
        started = time.perf_counter()
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=pad)  # fmt: skip
        tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return Timed(time.perf_counter() - started)

    one(prompts[-1])  # warm-up, untimed
    return lambda indices: summed([one(prompts[i]) for i in indices])


def vllm_bench_arguments(checkpoint: Path, sharegpt: Path, n: int, new_tokens: int, dtype: str) -> list[str]:
    """`vllm bench throughput`'s arguments for the same texts, sampling and engine settings as llmopt's vllm run."""
    return ["--model", str(checkpoint), "--dataset-name", "sharegpt", "--dataset-path", str(sharegpt),
            "--output-len", str(new_tokens), "--num-prompts", str(n), "--num-warmups", "1", "--dtype", dtype,
            "--seed", str(SEED), "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES), "--enforce-eager"]  # fmt: skip


def vllm_bench_alone(arguments: list[str], prompts: list[str], expected_tokens: int) -> Unit:
    """`vllm bench throughput`'s own code with its engine kept loaded: its arguments, its request sampling, its
    warm-up, then per unit its timed function (`_run_vllm_requests`: the clock around `LLM.generate` of the unit's
    requests, temperature 1, top-p 1, detokenized), after emptying the prefix cache as llmopt's side does. A unit's
    requests are the bench's own, found by their text: `prompts[i]` for each index."""
    from vllm import LLM
    from vllm.benchmarks import throughput as bench
    from vllm.engine.arg_utils import EngineArgs
    from vllm.tokenizers import get_tokenizer
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    bench.add_cli_args(parser)
    args = parser.parse_args(arguments)
    bench.validate_args(args)  # as the bench's main(): it also names the tokenizer
    random.seed(args.seed)
    tokenizer = get_tokenizer(args.tokenizer, tokenizer_mode=args.tokenizer_mode, trust_remote_code=args.trust_remote_code)
    warm_up = bench.get_requests(
        argparse.Namespace(**{**vars(args), "num_prompts": args.num_warmups, "seed": args.seed + 1}), tokenizer
    )
    requests = bench.get_requests(args, tokenizer)
    if len(requests) != len(prompts) or sum(r.prompt_len + r.expected_output_len for r in requests) != expected_tokens:
        raise SystemExit("vllm bench throughput would run other requests than asked")
    by_text = {r.prompt: r for r in requests}
    if sorted(by_text) != sorted(prompts):
        raise SystemExit("vllm bench throughput's requests are not the documents' prompts")
    llm = LLM.from_engine_args(EngineArgs.from_cli_args(args))

    def timed(batch: list) -> float:
        seconds, _ = bench._run_vllm_requests(llm, batch, args.n, args.disable_detokenize, do_profile=False,
                                              prequeue_requests=False, enable_lora=False)  # fmt: skip
        return seconds

    timed(warm_up)

    def unit(indices: list[int]) -> Timed:
        llm.reset_prefix_cache()
        return Timed(timed([by_text[prompts[i]] for i in indices]))

    return unit


def summed(parts: list[Timed]) -> Timed:
    counters = [p.counters_s for p in parts]
    return Timed(sum(p.seconds for p in parts), None if None in counters else sum(counters))  # type: ignore[arg-type]


def serve(build: Callable[[], Unit]) -> None:
    """The worker: load and warm up, say ready, then one answer per request line, until stdin closes."""
    answer = sys.stdout
    sys.stdout = sys.stderr  # the engines' own prints (a bench's "Warming up...") stay off the answer channel
    unit = build()
    answer.write(json.dumps({"ready": True}) + "\n")
    answer.flush()
    for line in sys.stdin:
        if line.strip():
            answer.write(json.dumps(asdict(unit(json.loads(line)))) + "\n")
            answer.flush()
