"""The roofline model against hand calculations, the GPU table, and its place in summaries."""

from __future__ import annotations

import json

import pytest
from conftest import assert_usage_error, run_cli

from llmopt.measure import roofline
from llmopt.measure.roofline import GpuSpec, WeightFormat
from llmopt.models import resolve
from llmopt.models.architecture import Architecture
from llmopt.runner import summary

# Small enough to do by hand: 2 layers, hidden 4, MLP 8, 2 query heads and 1 KV head of size 2, vocabulary 10.
TOY = Architecture(layers=2, hidden=4, intermediate=8, heads=2, kv_heads=1, head_dim=2, vocab=10)
FP16 = WeightFormat(2, 2, 2, "fp16")


def architecture(name: str) -> Architecture:
    """A shipped architecture's numbers, from its config."""
    return Architecture.from_config(resolve.load_config(name, resolve.resolve(name, "random"), trust_remote_code=False))


def gpu(bandwidth_gb_s: float, tflops: float) -> GpuSpec:
    return GpuSpec("toy", 1, bandwidth_gb_s, tflops, 2 * tflops, tflops / 4, 2 * tflops, "test")


def test_toy_parameter_counts_by_hand():
    # q and o: 4x(2*2) each; k and v: 4x(1*2) each; gate, up, down: 4x8 each; per layer 16+16+8+8+96 = 144.
    assert TOY.layer_params == 2 * 144
    assert TOY.head_params == 40
    assert TOY.kv_values_per_token() == 2 * 2 * 1 * 2


def test_memory_bound_run_by_hand():
    # weights (288 + 40) x 2 bytes = 656; KV 8 values x 2 bytes = 16 bytes per token of context.
    # prefill of 3 tokens: 704 bytes (weights + 3 tokens of KV written); 1952 FLOPs.
    # decode steps at context 4 and 5: 656 + 64 = 720 and 656 + 80 = 736 bytes.
    bound = roofline.least_time(TOY, FP16, gpu(1, 1), [[(3, 3)]])  # 1e9 bytes/s, 1e12 FLOP/s
    assert bound.prefill.seconds == pytest.approx(704e-9)
    assert bound.decode.seconds == pytest.approx((720 + 736) * 1e-9)
    assert bound.seconds == pytest.approx(2160e-9)
    assert (bound.prefill.bound_by, bound.decode.bound_by) == ("memory bandwidth", "memory bandwidth")
    assert bound.docs_per_sec == pytest.approx(1 / 2160e-9)


def test_compute_bound_run_by_hand():
    # prefill FLOPs: 2*288*3 (layers) + 2*2*3*3*4 (causal attention) + 2*40 (head, last position) = 1952.
    # decode FLOPs: 2*(288+40) + 4*2*4*context -> 784 at context 4 and 816 at context 5.
    bound = roofline.least_time(TOY, FP16, gpu(1e6, 1), [[(3, 3)]])
    assert bound.prefill.seconds == pytest.approx(1952e-12)
    assert bound.decode.seconds == pytest.approx((784 + 816) * 1e-12)
    assert bound.decode.bound_by == "compute"


def test_finished_sequences_stop_costing_and_batches_add_up():
    one = roofline.least_time(TOY, FP16, gpu(1, 1), [[(3, 3)]])
    # A second sequence that stops after its first token adds its prefill only.
    two = roofline.least_time(TOY, FP16, gpu(1, 1), [[(3, 3), (3, 1)]])
    assert two.decode.seconds == pytest.approx(one.decode.seconds)
    assert two.prefill.seconds == pytest.approx((656 + 6 * 16) * 1e-9)
    split = roofline.least_time(TOY, FP16, gpu(1, 1), [[(3, 3)], [(3, 3)]])
    assert split.seconds == pytest.approx(2 * one.seconds) and split.docs == 2


def test_llama_2_7b_numbers():
    arch = architecture("llama-2-7b")
    # 6,738,415,616 parameters in all; without the 65 RMSNorm vectors of 4096 and the embedding table, the rest.
    assert arch.layer_params + 2 * arch.head_params == 6_738_415_616 - 65 * 4096
    # Batch 1 fp16 on an A100 40GB: each token reads 13.2 GB of weights at 1555 GB/s, about 8.5 ms, plus the KV cache.
    bound = roofline.least_time(arch, roofline.weight_format("default", "float16"), roofline.GPUS["A100-40GB"], [[(515, 300)]])
    per_token_ms = 1000 * bound.decode.seconds / 299
    weight_ms = 1000 * (arch.layer_params + arch.head_params) * 2 / 1555e9
    assert weight_ms == pytest.approx(8.50, abs=0.01)
    kv_ms = 1000 * 2 * 32 * 4096 * 2 * (515 + 150) / 1555e9  # the mean context of the decode
    assert per_token_ms == pytest.approx(weight_ms + kv_ms, rel=1e-3)
    assert bound.decode.bound_by == "memory bandwidth"


def test_weight_formats():
    assert roofline.weight_format("default", "float32") == WeightFormat(4, 4, 4, "fp32")
    assert roofline.weight_format("8bit", "float16").rate == "int8"
    assert roofline.weight_format("4bit", "float16").layer_bytes_per_param == pytest.approx(0.5625)
    assert roofline.weight_format("vllm-awq", "float16").layer_bytes_per_param < 0.53


@pytest.mark.parametrize(
    "device, expected",
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA A100 80GB PCIe", "A100-80GB"),
        ("Tesla T4", "T4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200-NVL"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        # Grace Hopper: "H200" inside "GH200" must not read as an H200 (4.8 TB/s against the GH200's 4.0).
        ("NVIDIA GH200 480GB", "GH200-96GB"),
        ("NVIDIA GH200 144G HBM3e", "GH200-144GB"),
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("AMD EPYC 7B13 (2 cores)", None),
    ],
)
def test_device_names_map_to_the_table(device: str, expected: str | None):
    spec = roofline.gpu_for_device(device)
    assert (spec.name if spec else None) == expected


def test_every_gpu_has_a_source_and_sane_numbers():
    assert len(roofline.GPUS) == 15
    for spec in roofline.GPUS.values():
        assert spec.source.startswith("https://")
        assert spec.int8_tops >= spec.fp16_tflops > spec.fp32_tflops > 0 and spec.bandwidth_gb_s > 0
        assert spec.fp8_tflops == 0 or spec.fp8_tflops >= spec.fp16_tflops, "FP8 tensor cores run at least as fast"


def test_summary_on_a_known_gpu_gets_the_roofline():
    arch = architecture("llama-2-7b")
    identity = {
        "strategy": "default", "model": "m", "dataset": "workload:fixed:515", "prompt": "published-hf", "batch_size": 1,
        "max_new_tokens": 300, "sampling": "greedy", "seed": None, "ignore_eos": True, "options": {"weights": "random"},
    }  # fmt: skip
    records = [{"id": f"d{i}", "status": "ok", "prompt_tokens": 515, "output_tokens": 300, "generate_s": 10.0} for i in range(2)]
    session = {"event": "session", "load_s": 1.0, "run_s": 20.0, "describe": {"dtype": "float16", "architecture": vars(arch)}}
    result = summary.build(identity, 2, records, [session], "NVIDIA A100-SXM4-40GB")
    expected = roofline.least_time(arch, FP16, roofline.GPUS["A100-40GB"], [[(515, 300)], [(515, 300)]]).docs_per_sec
    assert result["roofline_gpu"] == "A100-40GB"
    assert result["roofline_docs_per_sec"] == pytest.approx(expected)
    assert result["pct_of_roofline"] == pytest.approx(100 * 0.1 / expected)
    assert result["rouge1"] is None and result["rouge_note"] == "not applicable: random weights"
    cpu = summary.build(identity, 2, records, [session], "AMD EPYC (2 cores)")
    assert cpu["roofline_docs_per_sec"] is None and cpu["pct_of_roofline"] is None


def test_a_tensor_parallel_run_is_bounded_by_all_its_gpus():
    """Two GPUs move twice the bytes per second: a bound from one would put a good TP=2 run above 100%."""
    arch = architecture("llama-2-7b")
    identity = {
        "strategy": "vllm", "model": "m", "dataset": "workload:fixed:515", "prompt": "published-hf", "batch_size": 1,
        "max_new_tokens": 300, "sampling": "greedy", "seed": None, "ignore_eos": True, "options": {"weights": "random"},
    }  # fmt: skip
    records = [{"id": f"d{i}", "status": "ok", "prompt_tokens": 515, "output_tokens": 300, "generate_s": 0.1} for i in range(8)]
    engine = {"dtype": "float16", "architecture": vars(arch), "batching": "engine", "quantization": None}
    sessions = [[{"event": "session", "load_s": 1.0, "describe": {**engine, "tensor_parallel_size": n}}] for n in (1, 2)]
    one, two = (summary.build(identity, 8, records, s, "NVIDIA H100 80GB HBM3") for s in sessions)
    h100 = roofline.GPUS["H100-SXM"]
    pairs = [[(515, 300)] * 8]
    assert one["roofline_docs_per_sec"] == pytest.approx(roofline.least_time(arch, FP16, h100, pairs).docs_per_sec)
    assert two["roofline_docs_per_sec"] == pytest.approx(roofline.least_time(arch, FP16, h100.times(2), pairs).docs_per_sec)
    assert (one["roofline_gpus"], two["roofline_gpus"]) == (1, 2)
    assert two["roofline_docs_per_sec"] > 1.9 * one["roofline_docs_per_sec"]
    assert two["pct_of_roofline"] < one["pct_of_roofline"] / 1.9


def test_vllm_kernel_names_keep_the_4bit_format():
    packed = roofline.weight_format("vllm", "float16", "awq_marlin")
    assert packed == roofline.weight_format("vllm-awq", "float16") == roofline.weight_format("vllm", "float16", "gptq_marlin")
    assert (
        packed == roofline.weight_format("vllm", "float16", "auto_awq") == roofline.weight_format("vllm", "float16", "auto_gptq")
    )
    assert packed.layer_bytes_per_param < 0.53


def test_cli_prints_the_bound_as_json():
    result = run_cli(
        "llmopt.roofline", "--gpu", "A100-40GB", "--model", "llama-2-7b", "--strategy", "default", "--batch-size", "1",
        "--prompt-tokens", "515", "--max-new-tokens", "300",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["docs_per_sec"] == pytest.approx(1 / out["seconds_per_doc"])
    assert out["decode_bound_by"] == "memory bandwidth" and out["prefill_bound_by"] in ("compute", "memory bandwidth")
    assert 8.5 < out["decode_floor_ms_per_token"] < 9.0


def test_cli_errors():
    assert_usage_error(run_cli("llmopt.roofline", "--gpu", "B300", "--model", "llama-2-7b"), "unknown GPU 'B300'", "H100-SXM")
    assert_usage_error(run_cli("llmopt.roofline", "--gpu", "T4", "--model", "./nope"), "does not exist")
    assert_usage_error(run_cli("llmopt.roofline", "--gpu", "T4"), "--model")


def test_bitsandbytes_4bit_counts_the_copy_only_where_every_gpu_dequantizes():
    """bitsandbytes 0.50's 4-bit matmul reads the packed weights in a fused kernel for small calls (batch-1 to batch-4
    decoding always), and dequantizes each weight into a 16-bit copy that the matmul reads for large ones (always
    above 1536 tokens): the bound counts the copy there, and only there, so that it stays a lower bound."""
    arch = architecture("llama-2-7b")
    nf4 = roofline.weight_format("4bit", "float16")
    assert [nf4.layer_bytes_moved_for(rows) for rows in (1, 4, 1536)] == [0.5625] * 3, "the fused kernel: as stored"
    assert nf4.layer_bytes_moved_for(1537) == pytest.approx(0.5625 + 2 + 2), "read packed, copy written and read"
    assert roofline.weight_format("4bit", "float32").layer_bytes_moved_for(8) == pytest.approx(0.5625 + 8)
    # LLM.int8 reads its int8 weights once in an int8 matmul at every size
    int8 = roofline.weight_format("8bit", "float16")
    assert int8.layer_bytes_moved_for(1) == int8.layer_bytes_moved_for(4096) == 1.0 and int8.rate == "int8"
    # Memory-bound prefills (compute made free), 1536 and 1537 tokens: the second reads the 16-bit copy too.
    fast = gpu(roofline.GPUS["H200"].bandwidth_gb_s, 1e9)
    head = arch.head_params * 2
    for tokens, per_weight in ((1536, 0.5625), (1537, 4.5625)):
        bound = roofline.least_time(arch, nf4, fast, [[(tokens, 1)]])
        moved = arch.layer_params * per_weight + head + tokens * arch.kv_values_per_token() * 2
        assert bound.prefill.seconds == pytest.approx(moved / (fast.bandwidth_gb_s * 1e9))
    # decoding at batch 2 (the GPU check's 4bit cell) reads the stored bytes, so its floor is the 4-bit one
    two = roofline.least_time(arch, nf4, roofline.GPUS["H200"], [[(515, 300), (515, 300)]])
    sixteen = roofline.least_time(arch, roofline.weight_format("default", "float16"), roofline.GPUS["H200"],
                                  [[(515, 300), (515, 300)]])  # fmt: skip
    assert two.decode.seconds < sixteen.decode.seconds / 3
    engine = {"architecture": vars(arch), "dtype": "float16", "quantization": {"load_in_4bit": True}}
    assert "bitsandbytes 4-bit" in roofline.for_summary("NVIDIA H200", engine, "4bit", 2, [(515, 300)])["roofline_note"]
