"""llmopt roofline (python -m llmopt.roofline): the least possible time of a run on a GPU, printed as JSON.

llmopt roofline --gpu A100-40GB --model llama-2-7b --strategy default --batch-size 1 --prompt-tokens 515 \\
    --max-new-tokens 300
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from llmopt.commands import common
from llmopt.errors import UsageError


def parser(prog: str, gpus: list[str]) -> common.Parser:
    p = common.Parser(prog=prog, description="The least possible time of a run on a GPU, printed as JSON.")
    p.add_argument("--gpu", required=True, help=f"one of {', '.join(gpus)}")
    p.add_argument("--model", required=True, help="a shipped architecture (llama-2-7b, ...), a model folder or a Hub id")
    p.add_argument("--strategy", default="default", help="sets the weight format: default, 8bit, 4bit, vllm-awq, ...")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.add_argument("--batch-size", type=common.positive_int, default=1)
    common.add_token_lengths(p, prompt_tokens=515, new_tokens=300)
    p.add_argument("--tensor-parallel-size", type=common.positive_int, default=1, help="GPUs sharing the model")
    p.add_argument("--docs", type=common.positive_int, help="documents in the run (default: one batch)")
    p.add_argument("--list-gpus", action="store_true", help="print the GPU table with its sources")
    return p


def main(argv: list[str] | None = None, prog: str = "llmopt roofline") -> int:
    from llmopt.measure.roofline import GPUS, gpu_for_device, least_time, run_batches, weight_format, weights_bytes

    if argv is None:
        argv = sys.argv[1:]
    if "--list-gpus" in argv:
        print(json.dumps([asdict(g) for g in GPUS.values()], indent=2))
        return common.EXIT_OK
    args = parser(prog, list(GPUS)).parse_args(argv)
    gpu = GPUS.get(args.gpu) or gpu_for_device(args.gpu)
    if gpu is None:
        raise UsageError(f"unknown GPU {args.gpu!r}: use one of {', '.join(GPUS)}")
    from llmopt.models import resolve
    from llmopt.models.architecture import Architecture

    path = resolve.fetch(args.model, weights="random").path
    arch = Architecture.from_config(resolve.load_config(args.model, path, trust_remote_code=False))
    fmt = weight_format(args.strategy, args.dtype)
    docs = args.docs or args.batch_size
    n_batches = -(-docs // args.batch_size)
    gpus = gpu.times(args.tensor_parallel_size)
    bound = least_time(arch, fmt, gpus, run_batches([(args.prompt_tokens, args.new_tokens)] * docs, args.batch_size))
    result = {
        "gpu": gpu.name,
        "gpus": args.tensor_parallel_size,
        "model": args.model,
        "strategy": args.strategy,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        **bound.as_dict(),
        # One decode step of one batch: what a token costs each sequence at best.
        "decode_floor_ms_per_token": 1000 * bound.decode.seconds / n_batches / max(1, args.new_tokens - 1),
        "weight_bytes": arch.layer_params * fmt.layer_bytes_per_param + arch.head_params * fmt.head_bytes_per_param,
        "weights_bytes_with_embedding": weights_bytes(arch, fmt),
    }
    print(json.dumps(result, indent=2))
    return common.EXIT_OK


def entry(prog: str = "llmopt roofline", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
