"""On a CUDA GPU: each transformers strategy on the tiny model, with memory and timings measured (skipped elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import read_json, run_cli

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("strategy", ["default", "sdpa", "8bit", "4bit", "flash-attn"])
def test_strategy_on_cuda_measures_memory_and_time(tmp_path: Path, strategy: str):
    if strategy == "flash-attn":
        pytest.importorskip("flash_attn")
    out = tmp_path / strategy
    result = run_cli(
        "llmopt.run", "--strategy", strategy, "--model", "tiny", "--dataset", "sample", "--limit", "8",
        "--batch-size", "4", "--max-new-tokens", "16", "--ignore-eos", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["status"] == "ok" and summary["n_completed"] == 8
    assert summary["engine"]["device"] == "cuda"
    assert summary["peak_gpu_mem_bytes"] > 0 and summary["peak_gpu_reserved_bytes"] >= summary["peak_gpu_mem_bytes"]
    assert 0 < summary["generate_s"] <= summary["run_s"]
    env = read_json(out / "env.json")
    assert env["gpu"]["name"] and env["gpu"]["memory_bytes"] > 0
    assert summary["device"] == env["gpu"]["name"]


def test_random_weights_auto_batch_and_compile_on_cuda(tmp_path: Path):
    """The issue-5 paths on a GPU: weights made on the device, the batch probe, the compiled decode."""
    for strategy, batch in (("default", "auto"), ("4bit", "auto"), ("compile", "1")):
        out = tmp_path / strategy
        result = run_cli(
            "llmopt.run", "--strategy", strategy, "--model", "tiny", "--weights", "random", "--workload", "wikilingua",
            "--limit", "8", "--batch-size", batch, "--max-new-tokens", "16", "--out", out,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        summary = read_json(out / "summary.json")
        assert summary["status"] == "ok" and summary["engine"]["device"] == "cuda" and summary["weights"] == "random"
        assert summary["peak_gpu_mem_bytes"] > 0 and summary["output_tokens_mean"] == 16
        if batch == "auto":
            assert summary["batch_size"] == 8


def test_peaks_leave_out_memory_freed_after_loading(tmp_path: Path):
    """4-bit random weights are made in 16 bits on the GPU, then quantized: the 16-bit copy is freed before the
    document loop, and the allocator's cache must give it back before the peaks start."""
    out = tmp_path / "4bit"
    result = run_cli(
        "llmopt.run", "--strategy", "4bit", "--model", "tiny-small", "--weights", "random", "--workload", "fixed:32",
        "--limit", "4", "--batch-size", "2", "--max-new-tokens", "8", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    from llmopt.measure import roofline
    from llmopt.models.architecture import Architecture

    arch = Architecture(**summary["engine"]["architecture"])
    sixteen_bit = roofline.weights_bytes(arch, roofline.weight_format("default", "float16"))
    assert summary["peak_gpu_reserved_bytes"] < sixteen_bit, (summary["peak_gpu_reserved_bytes"], sixteen_bit)
    assert summary["peak_gpu_device_used_bytes"] > 0 and summary["gpu_memory_note"] is None


def test_vllm_on_cuda_reports_device_memory_not_the_allocator(tmp_path: Path):
    """The engine core runs in its own process on CUDA: the allocator figures are null, NVML's is the device's."""
    pytest.importorskip("vllm")
    out = tmp_path / "vllm"
    result = run_cli(
        "llmopt.run", "--strategy", "vllm", "--model", "tiny", "--dataset", "sample", "--limit", "4",
        "--max-new-tokens", "8", "--ignore-eos", "--gpu-memory-utilization", "0.3", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    engine = summary["engine"]
    assert engine["engine_in_process"] is False and summary["peak_gpu_mem_bytes"] is None
    assert summary["peak_gpu_device_used_bytes"] > engine["kv_cache_bytes"] > 0
    assert engine["weights_bytes"] > 0 and engine["quantization"] is None


def capability() -> tuple[int, int]:
    import torch

    return torch.cuda.get_device_capability(0)


@pytest.mark.parametrize("strategy", ["vllm-fp8", "torchao-fp8"])
def test_fp8_modes_on_ada_or_hopper(tmp_path: Path, strategy: str):
    if capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9+")
    pytest.importorskip("vllm" if strategy == "vllm-fp8" else "torchao")
    out = tmp_path / strategy
    result = run_cli(
        "llmopt.run", "--strategy", strategy, "--model", "tiny", "--dataset", "sample", "--limit", "4",
        "--max-new-tokens", "8", "--ignore-eos", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["status"] == "ok" and summary["output_tokens_mean"] == 8
    assert "fp8" in str(summary["engine"]["quantization"])


def test_torchao_int4_packs_two_weights_a_byte_on_cuda(tmp_path: Path):
    pytest.importorskip("torchao")
    from llmopt.strategies.torchao import TorchAoInt4Strategy

    strategy = TorchAoInt4Strategy("tiny-small")
    strategy.load()
    try:
        weight = strategy._model.model.layers[0].mlp.down_proj.weight
        names, _ = weight.__tensor_flatten__()
        stored = sum(getattr(weight, n).numel() * getattr(weight, n).element_size() for n in names)
        assert stored < 0.6 * weight.numel(), "about half a byte per weight, scales included"
        assert strategy.describe()["dtype"] == "bfloat16", "tinygemm computes in bf16"
        from llmopt.strategies.base import GenerationParams

        (generation,) = strategy.generate_batch(["Boil the water."], GenerationParams(max_new_tokens=4, ignore_eos=True))
        assert generation.output_tokens == 4
    finally:
        strategy.close()
    refused = run_cli("llmopt.run", "--strategy", "torchao-int4", "--model", "tiny", "--dtype", "float16",
                      "--dataset", "sample", "--limit", "1", "--out", tmp_path / "fp16")  # fmt: skip
    assert refused.returncode == 2 and "computes in bfloat16 on CUDA" in refused.stderr


def test_llamacpp_offloads_every_layer(tmp_path: Path):
    llama_cpp = pytest.importorskip("llama_cpp")
    if not llama_cpp.llama_supports_gpu_offload():
        pytest.skip("llama-cpp-python was built without CUDA (CMAKE_ARGS=-DGGML_CUDA=on)")
    out = tmp_path / "llamacpp"
    result = run_cli("llmopt.run", "--strategy", "llamacpp", "--model", "tiny", "--dataset", "sample", "--limit", "4",
                     "--max-new-tokens", "8", "--ignore-eos", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert read_json(out / "summary.json")["engine"]["device"] == "cuda"
