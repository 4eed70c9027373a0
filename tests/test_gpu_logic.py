"""What only a GPU shows, made testable on any host: the GPUs NVML reads, memory figures of an engine in its own
process, the dtype rule, and quantized modes that must refuse plain checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_unavailable, read_json, run_cli

from llmopt.errors import UsageError
from llmopt.measure import nvml
from llmopt.measure.memory import MemoryScope, gpu_figures
from llmopt.models import precision, resolve

# Four GPUs as NVML lists them (machine order), each with its UUID and PCI bus id.
MACHINE = [
    nvml.NvmlDevice(f"GPU-0000000{i}-aaaa-bbbb-cccc-00000000000{i}", f"00000000:{0x17 + i:02X}:00.0", f"handle{i}")
    for i in range(4)
]


def cuda(i: int, *, uuid: bool = True) -> nvml.CudaDevice:
    """Machine GPU i as torch describes it: UUID without NVML's prefix, bus id with a 4-digit domain."""
    return nvml.CudaDevice(f"0000000{i}-aaaa-bbbb-cccc-00000000000{i}" if uuid else None, f"0000:{0x17 + i:02x}:00.0")


def test_visible_devices_are_found_by_uuid_not_by_index():
    """CUDA_VISIBLE_DEVICES=2,3: the run's device 0 is the machine's GPU 2; index 0 would read someone else's GPU."""
    found = nvml.match([cuda(2), cuda(3)], MACHINE)
    assert [d.handle for d in found] == ["handle2", "handle3"]


def test_pci_bus_id_when_torch_gives_no_uuid():
    assert [d.handle for d in nvml.match([cuda(1, uuid=False)], MACHINE)] == ["handle1"]


def test_mig_instance_matches_its_own_uuid():
    mig = nvml.NvmlDevice("MIG-9f1e2d3c-0000-1111-2222-333344445555", None, "mig-handle")
    found = nvml.match([nvml.CudaDevice("MIG-9f1e2d3c-0000-1111-2222-333344445555", None)], [*MACHINE, mig])
    assert [d.handle for d in found] == ["mig-handle"]
    assert nvml.match([nvml.CudaDevice("ffffffff-0000-0000-0000-000000000000", None)], MACHINE) == [None]


def test_a_failing_nvml_read_leaves_a_note_not_an_exception():
    """Containers and MIG often refuse NVML calls: the sampler keeps what it read before and says why it stopped."""
    readings = iter([100, 300, 200])

    def read(handle: str) -> int:
        value = next(readings, None)
        if value is None:
            raise RuntimeError("NVML_ERROR_NO_PERMISSION")
        return value

    sampler = nvml.Sampler(["gpu"], read=read, interval_s=0.01)
    for _ in range(5):
        sampler.sample()
    assert sampler.peak == 300 and sampler.note == "NVML read failed: RuntimeError: NVML_ERROR_NO_PERMISSION"
    sampler.start()
    sampler.stop()  # no exception from the thread either
    sampler = nvml.Sampler(["gpu"], read=lambda h: 5)
    sampler.stop()  # never started: nothing to join
    summed = nvml.Sampler(["a", "b"], read={"a": 5, "b": 7}.get)
    summed.sample()
    assert (summed.peak, summed.per_device_peak) == (12, [5, 7]), "a tensor-parallel run: every GPU it uses, summed"


def test_engine_in_its_own_process_has_null_allocator_figures():
    """vLLM's engine core allocates in its own process: this process's allocator reads about 0, which is not the
    engine's memory. The figure is null and the device's (NVML) figure stands."""
    own = gpu_figures(5 << 30, 6 << 30, 7 << 30, MemoryScope(allocator=True))
    engine = gpu_figures(12 << 20, 20 << 20, 70 << 30, MemoryScope(allocator=False, devices=2))
    assert own == {"peak_gpu_mem_bytes": 5 << 30, "peak_gpu_reserved_bytes": 6 << 30, "peak_gpu_device_used_bytes": 7 << 30}
    assert engine == {"peak_gpu_mem_bytes": None, "peak_gpu_reserved_bytes": None, "peak_gpu_device_used_bytes": 70 << 30}


@pytest.mark.parametrize(
    ("checkpoint", "device", "capability", "native_bf16", "expected"),
    [
        ("float16", "cuda", (8, 0), False, "float16"),  # Llama-2 checkpoints are fp16: served in fp16
        ("bfloat16", "cuda", (9, 0), False, "bfloat16"),  # Mistral, Llama-3: bf16 where the GPU has it
        ("bfloat16", "cuda", (7, 5), False, "float16"),  # a T4 has no bf16
        ("float32", "cuda", (8, 6), False, "bfloat16"),  # 32-bit checkpoints are served in 16 bits, as vLLM does
        ("float32", "cuda", (7, 5), False, "float16"),
        (None, "cuda", (8, 0), False, "bfloat16"),
        ("bfloat16", "cpu", None, False, "float32"),  # emulated bf16 is slower than float32
        ("float16", "cpu", None, True, "bfloat16"),  # AVX512-BF16 / AMX
    ],
)
def test_one_dtype_rule(checkpoint, device, capability, native_bf16, expected):
    assert precision.serving_dtype(checkpoint, device, capability, native_bf16) == expected


def test_transformers_and_vllm_pick_the_same_dtype_here(default_tiny_auto_run, vllm_tiny_run):
    """Both engines apply the rule to the same checkpoint on this host, so their rows compare the same precision.
    (The runs, with no --dtype, are conftest's, shared with the tests of auto batching and of vLLM.)"""
    dtypes = {}
    for strategy, (result, out) in (("default", default_tiny_auto_run), ("vllm", vllm_tiny_run)):
        assert result.returncode == 0, result.stderr
        dtypes[strategy] = read_json(out / "summary.json")["dtype"]
    assert dtypes["default"] == dtypes["vllm"]


def test_gptq_mode_refuses_a_checkpoint_that_is_not_gptq():
    """transformers would load plain weights in 16 bits and the row would be labelled GPTQ."""
    from llmopt.strategies.hf import GptqStrategy

    with pytest.raises(UsageError, match="strategy 'gptq' needs a GPTQ checkpoint; 'tiny' is not quantized"):
        GptqStrategy("tiny").load()
    with pytest.raises(UsageError, match="'tiny-awq' is awq"):
        GptqStrategy("tiny-awq").load()
    from llmopt.models import tiny

    config = read_json(tiny.ensure("tiny-gptq") / "config.json")
    precision.require_quantization(type("Config", (), config)(), "gptq", "gptq", "tiny-gptq")  # a GPTQ checkpoint passes


def test_vllm_records_the_quantization_it_chose(tmp_path: Path):
    """Given an AWQ checkpoint, the plain `vllm` strategy runs it quantized (vLLM reads the checkpoint's config):
    the summary must say awq, not the strategy's own None, and the roofline must count 4-bit weights."""
    pytest.importorskip("vllm")
    import torch

    out = tmp_path / "run"
    result = run_cli(
        "llmopt.run", "--strategy", "vllm", "--model", "tiny-awq", "--dataset", "sample", "--limit", "2",
        "--max-new-tokens", "3", "--ignore-eos", "--enforce-eager", "--out", out,
    )  # fmt: skip
    if not (torch.cuda.is_available() or torch.cpu._is_avx512_supported()):
        assert_unavailable(result, "no int4 kernel")
        return
    assert result.returncode == 0, result.stderr
    engine = read_json(out / "summary.json")["engine"]
    assert engine["quantization"].startswith("awq") and engine["quantization_requested"] is None
    # 4-bit packed layers and group scales: well under the 16-bit size of the same checkpoint.
    assert engine["weights_bytes_source"] == "checkpoint"
    assert engine["weights_bytes"] < precision.checkpoint_bytes(str(resolve.resolve("tiny")), "bfloat16")


def test_visible_devices_are_read_without_cuda():
    """With the engine in another process, this one must not initialize CUDA (a context of its own on the GPU, and
    vLLM forced to spawn): the devices come from CUDA_VISIBLE_DEVICES as NVML indices or UUIDs."""
    assert nvml.visible(2, env=None) is None or True  # unset in this process's environment: devices 0..n-1
    assert nvml.visible(2, env="3,1,0") == [nvml.CudaDevice(None, None, 3), nvml.CudaDevice(None, None, 1)]
    assert nvml.visible(1, env="GPU-0000000a-aaaa-bbbb-cccc-00000000000a") == [
        nvml.CudaDevice("GPU-0000000a-aaaa-bbbb-cccc-00000000000a", None)
    ]
    assert nvml.visible(4, env="") == []


def test_a_stuck_nvml_call_never_hangs_the_run():
    import threading

    stuck, never = threading.Event(), threading.Event()

    def read(handle: str) -> int:
        if stuck.is_set():
            never.wait(3600)  # a driver call that never returns
        return 1

    sampler = nvml.Sampler(["gpu"], read=read, interval_s=0.01).start()
    stuck.set()
    started = __import__("time").monotonic()
    sampler.stop()
    assert sampler.peak == 1 and "stopped answering" in sampler.note
    assert __import__("time").monotonic() - started < 60


def test_downloads_and_byte_counts_take_one_copy_of_the_weights(tmp_path: Path):
    """Mistral v0.3 ships its weights twice (sharded model-*.safetensors and consolidated.safetensors)."""
    import json
    import struct

    from llmopt.models.resolve import _patterns

    _, ignore = _patterns(["model-00001-of-00002.safetensors", "consolidated.safetensors", "config.json"], "pretrained", False)
    assert "consolidated*.safetensors" in ignore and "*.bin" in ignore

    def shard(name: str, rows: int) -> None:
        header = json.dumps({"w": {"dtype": "F16", "shape": [rows, 4], "data_offsets": [0, rows * 8]}}).encode()
        (tmp_path / name).write_bytes(struct.pack("<Q", len(header)) + header + bytes(rows * 8))

    shard("model-00001-of-00001.safetensors", 10)
    shard("consolidated.safetensors", 10)
    assert precision.checkpoint_bytes(str(tmp_path), None) == 160  # both files, without an index
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}}))
    assert precision.checkpoint_bytes(str(tmp_path), None) == 80
    assert precision.checkpoint_bytes(str(tmp_path), "float32") == 160, "floating tensors at the run's dtype"
