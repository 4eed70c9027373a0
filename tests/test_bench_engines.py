"""scripts/bench_engines.py's own logic, without its timings: the file it gives `vllm bench throughput` (read by the
bench's own dataset code), the verdict on a pair's interval, and the interval of paired units."""

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


def test_paired_units_give_the_ratio_of_summed_seconds_and_an_interval_across_launches():
    """The ratio is llmopt's docs/s over the engine's (the engine's seconds over ours, summed over every unit); its
    interval spans the launches' ratios, however steady the units within one launch; one launch gives none."""
    import random

    paired = script().Paired
    rng = random.Random(0)
    close = paired("close")
    for launch, offset in enumerate([0.99, 1.01, 1.0, 0.995, 1.005, 1.0]):  # each launch a speed of its own
        for _ in range(16):
            drift = 1 + 0.5 * rng.random()  # the machine's speed, shared by both sides of a unit
            close.add(launch, ours=drift * offset * rng.uniform(0.97, 1.03), theirs=drift * rng.uniform(0.97, 1.03))
    low, high = close.interval()
    assert low < close.ratio() < high and script().verdict((low, high)) == "within 5%"
    apart = paired("apart")
    for launch, offset in enumerate([0.9, 1.1, 0.92, 1.08]):
        for _ in range(16):
            apart.add(launch, ours=offset, theirs=1.0)
    assert script().verdict(apart.interval()).startswith("undecided"), "steady units, launches far apart"
    slower = paired("slower")
    for launch in range(4):
        for _ in range(8):
            slower.add(launch, ours=1.1 * rng.uniform(0.99, 1.01), theirs=1.0)
    assert abs(slower.ratio() - 1 / 1.1) < 0.01 and script().verdict(slower.interval()) == "outside 5%"
    one = paired("one launch")
    for _ in range(32):
        one.add(0, ours=1.0, theirs=1.0)
    assert one.interval() is None
