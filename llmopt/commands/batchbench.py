"""llmopt batchbench (python -m llmopt.batchbench): prefill and decode latency and throughput per static batch size,
as TGI's `text-generation-benchmark` reports them, in-process for the transformers and vLLM strategies.

llmopt batchbench --strategy default --model tiny --batch-sizes 1,2,4,8 --prompt-tokens 512 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmopt.commands import common
from llmopt.errors import UsageError
from llmopt.stopping import StopRequest


def _sizes(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return values


def parser(prog: str) -> common.Parser:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--strategy", required=True, help="a transformers or vLLM strategy (default, sdpa, 4bit, compile, vllm, ...)")
    p.add_argument("--model", help="tiny, a shipped architecture with --weights random, a folder or a Hub id")
    p.add_argument("--weights", choices=["pretrained", "random"], default="pretrained")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--batch-sizes", type=_sizes, default=[1, 2, 4, 8, 16, 32])
    common.add_token_lengths(p, prompt_tokens=512, new_tokens=128)
    p.add_argument("--repeats", type=common.positive_int, default=5, help="timed repeats per batch size (default 5)")
    p.add_argument("--enforce-eager", action="store_true", default=None, help="vLLM: no CUDA graphs or torch.compile")
    p.add_argument("--max-model-len", type=common.positive_int, help="vLLM: longest prompt plus output")
    p.add_argument("--out", type=Path, help="results folder (default results/batchbench-<strategy>-<model>)")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    return p


def main(argv: list[str] | None = None, prog: str = "llmopt batchbench") -> int:
    args = parser(prog).parse_args(argv)
    from llmopt import strategies
    from llmopt.files import write_json_atomic
    from llmopt.measure import environment, roofline
    from llmopt.models import resolve
    from llmopt.models.architecture import Architecture
    from llmopt.serving import batchbench

    cls = strategies.resolve(args.strategy)
    if not cls.needs_model or not cls.uses_prompt:
        raise UsageError(f"strategy {cls.name!r} has no model to benchmark")
    strategies.require_available(cls)
    model = args.model or cls.default_model
    resolve.check_weights(model, args.weights)
    options: dict[str, Any] = {"weights": args.weights}
    if args.dtype:
        options["dtype"] = args.dtype
    if cls.engine_batching:
        options.update({k: v for k, v in (("enforce_eager", args.enforce_eager), ("max_model_len", args.max_model_len)) if v})
        options["enable_prefix_caching"] = False  # the repeats send the same prompts
    elif args.enforce_eager or args.max_model_len:
        raise UsageError(f"--enforce-eager and --max-model-len are vLLM engine options; {cls.name!r} does not take them")
    out = args.out or Path("results") / f"batchbench-{cls.name}-{Path(model).name}"
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{str(out)!r} already holds results: pass another --out")
    strategy = cls(model, **options)
    stop = common.stop_on_signals(StopRequest())
    strategy.fetch()
    strategy.load()
    try:
        context = strategy.context_length()
        if context is not None and args.prompt_tokens + args.new_tokens > context:
            raise UsageError(f"--prompt-tokens plus --max-new-tokens exceeds the model's context of {context}")
        say = lambda line: print(line, file=sys.stderr)  # noqa: E731
        rows, interrupted = batchbench.sweep_sizes(strategy, args.batch_sizes, args.prompt_tokens, args.new_tokens,
                                                   args.repeats, stop, say)  # fmt: skip
    finally:
        describe = strategy.describe()
        strategy.close()
    env = environment.environment(sys.argv[1:] if argv is None else argv, module="llmopt.batchbench")
    device = environment.device_label(env["gpu"])
    gpu = roofline.gpu_for_device(device)
    if gpu is not None and describe.get("architecture"):
        quantization = describe.get("quantization")
        fmt = roofline.weight_format(cls.name, describe.get("dtype"), quantization if isinstance(quantization, str) else None)
        for row in rows:
            bound = roofline.least_time(Architecture(**describe["architecture"]), fmt, gpu,
                                        [[(args.prompt_tokens, args.new_tokens)] * row["batch_size"]])  # fmt: skip
            row["decode_floor_ms_per_token"] = 1000 * bound.decode.seconds / max(args.new_tokens - 1, 1)
            row["prefill_floor_ms"] = 1000 * bound.prefill.seconds
    summary = {
        "strategy": cls.name, "model": model, "weights": args.weights, "device": device, "engine": describe,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "roofline_gpu": gpu.name if gpu else None,
        "prefix_caching": describe.get("prefix_caching", False),
        "method": "prefill = a 1-token call; decode = a full call minus the prefill of the same repeat, over the other "
                  "new tokens; warm-up at both lengths, untimed" + ("; vLLM prefix caching off" if cls.engine_batching else ""),
        "batches": rows,
        "interrupted": interrupted,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", summary)
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")
    batchbench.write_outputs(out, summary, args.plots)
    print(f"results: {out}")
    return common.EXIT_INTERRUPTED if interrupted else common.EXIT_OK


def entry(prog: str = "llmopt batchbench", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
