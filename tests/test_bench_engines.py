"""scripts/bench_engines.py's own logic, without its hour of timings: the file it gives `vllm bench throughput` (read
by the bench's own dataset code) and the verdict on a pair's interval."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def script():
    spec = importlib.util.spec_from_file_location("bench_engines", ROOT / "scripts" / "bench_engines.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_engines"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_bench_times_exactly_the_prompts_and_warms_up_on_another_text(tmp_path: Path, tiny_model: Path):
    """What `vllm bench throughput --dataset-name sharegpt --num-warmups 1` makes of the file: its timed requests are
    the prompts, each once, and its warm-up request is the other text (a timed prompt warmed up would be served from
    vLLM's prefix cache)."""
    pytest.importorskip("vllm")
    from vllm.benchmarks.throughput import add_cli_args, get_requests
    from vllm.tokenizers import get_tokenizer
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    bench_engines = script()
    prompts = [f"document {i}: " + "word " * (10 + i) for i in range(7)]
    data = tmp_path / "prompts.sharegpt.json"
    bench_engines.sharegpt_file(prompts, "the warm-up text", data)
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(["--model", str(tiny_model), "--dataset-name", "sharegpt", "--dataset-path", str(data),
                              "--output-len", "8", "--num-prompts", str(len(prompts)), "--num-warmups", "1",
                              "--seed", str(bench_engines.SEED)])  # fmt: skip
    args.tokenizer = args.model
    tokenizer = get_tokenizer(str(tiny_model))
    timed = get_requests(args, tokenizer)
    # The bench's main draws its warm-ups as the timed requests, with --num-warmups of them and the seed plus one.
    warm_up = get_requests(argparse.Namespace(**{**vars(args), "num_prompts": 1, "seed": args.seed + 1}), tokenizer)
    assert sorted(r.prompt for r in timed) == sorted(prompts)
    assert [r.prompt for r in warm_up] == ["the warm-up text"]


def test_a_pair_is_within_5_percent_only_when_its_whole_interval_is():
    pair = script().Pair
    assert pair("steady", [1.01, 0.99, 1.0, 1.02, 0.98]).verdict() == "within 5%"
    assert pair("slower", [0.80, 0.82, 0.81, 0.79]).verdict() == "outside 5%"
    assert pair("spread", [0.90, 1.10, 1.0]).verdict().startswith("undecided")
    low, high = pair("spread", [0.90, 1.10, 1.0]).interval()
    assert low < 0.95 and high > 1.05
    assert pair("once", [1.0]).interval() is None
