"""The CUDA paths' measurements, held on any host: vLLM's CUDA check that must not poison fork, GPU figures of an
engine outside torch (a .gguf run never imports torch), no CPU joules for a GPU run, vLLM's memory as its weights and
KV cache, MIG instances, FP8 weights, and the device order of Ray cells. What only a GPU shows has a `gpu` test too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, read_json, run_cli

from llmopt.measure import memory, nvml, roofline
from llmopt.measure.energy import EnergyMeter
from llmopt.models.architecture import Architecture

CLEAN = ("PYTORCH_NVML_BASED_CUDA_CHECK", "VLLM_WORKER_MULTIPROC_METHOD")


def run_python(code: str, timeout: float = 300) -> dict:
    """`code` in a fresh interpreter (nothing imported, none of the variables the check sets), its last line as JSON."""
    env = {k: v for k, v in cli_env().items() if k not in CLEAN}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=timeout)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def nvml_sees_a_gpu() -> bool:
    try:
        return bool(nvml.visible_devices())
    except Exception:
        return False


# 1. vLLM's CUDA check ------------------------------------------------------------------------------------------------

VLLM_CHECKS = """
    import json, os, sys
    from llmopt import strategies
    from llmopt.strategies import vllm

    ready = {n: strategies.availability(strategies.resolve(n)).ready
             for n in ("vllm", "vllm-awq", "vllm-gptq", "vllm-fp8", "vllm-ngram")}
    before_vllm = "vllm" not in sys.modules
    device = "cuda" if vllm._has_cuda() else "cpu"  # what VllmStrategy.load decides before importing vllm
    strategies.list_lines()  # --list-strategies: every strategy's check
    import torch
    {fork_probe}
    try:
        from llmopt.measure import cuda
        via = cuda.check().via
    except ImportError:
        via = None
    print(json.dumps({"nvml_check": os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"), "forked_ok": forked_ok,
                      "start_method": os.environ.get("VLLM_WORKER_MULTIPROC_METHOD"),
                      "initialized": torch.cuda.is_initialized(), "via": via,
                      "before_vllm": before_vllm, "device": device, "ready": ready}))
"""


def test_vllm_checks_for_cuda_through_nvml_before_vllm_is_imported():
    """torch.cuda.is_available() initializes the CUDA driver (poisoning fork) without is_initialized(): vLLM would
    then fork its engine, which fails. The checks of every vLLM strategy, and --list-strategies, go through NVML,
    and leave torch's own is_available() asking NVML for whatever runs after them."""
    import torch

    seen = run_python(VLLM_CHECKS.replace("{fork_probe}", "forked_ok = None"))
    assert seen["nvml_check"] == "1", "torch's later is_available() calls must ask NVML, not the CUDA driver"
    assert seen["before_vllm"] and not seen["initialized"]
    if not torch.backends.cuda.is_built():
        assert seen["via"] == "torch without CUDA" and seen["device"] == "cpu"
        assert seen["start_method"] is None
    elif nvml_sees_a_gpu():
        assert seen["via"] == "NVML" and seen["device"] == "cuda"
        assert seen["start_method"] is None, "with NVML nothing poisoned fork: vLLM keeps its own choice"
    else:  # CUDA without NVML: CUDA was asked, so vLLM must spawn where it found a GPU
        assert seen["via"].startswith("CUDA (NVML could not tell")
        assert (seen["start_method"] == "spawn") == (seen["device"] == "cuda")


# What vLLM does next: fork its engine core, which initializes CUDA (a poisoned fork raises in torch.cuda.init()).
FORK_PROBE = """from llmopt.strategies.base import quiet_library_logs
    quiet_library_logs()
    child = os.fork()
    if child == 0:
        try:
            torch.cuda.init()
            torch.zeros(1, device="cuda")
            os._exit(0)
        except Exception:
            os._exit(1)
    forked_ok = os.waitpid(child, 0)[1] == 0"""


@pytest.mark.gpu
def test_fork_still_uses_cuda_after_the_vllm_checks():
    """On a CUDA host: after everything the vLLM strategies check before starting the engine, a forked child (as
    vLLM's engine core is) can still initialize CUDA."""
    import importlib.util

    seen = run_python(VLLM_CHECKS.replace("{fork_probe}", FORK_PROBE))
    assert seen["device"] == "cuda"
    # ready where vLLM is importable (the GPU check carries it only in its vLLM tier); the checks ran either way
    assert seen["ready"]["vllm"] == (importlib.util.find_spec("vllm") is not None)
    assert seen["forked_ok"], "the parent's CUDA check poisoned fork: vLLM's forked engine could not use CUDA"


# 2. an engine outside torch, torch not even loaded -------------------------------------------------------------------


def test_an_engine_outside_torch_is_measured_through_nvml_without_torch():
    """llama.cpp on a .gguf file never imports torch: its GPU memory, energy and device must still come from NVML."""
    seen = run_python("""
        import json, sys
        from llmopt.measure import environment, memory

        meter = memory.DeviceMemory()
        meter.start(memory.MemoryScope(allocator=False, devices=1))  # as llamacpp declares on a CUDA build
        meter.stop()
        try:
            expected = environment._gpu_info_from_nvml()
        except Exception:
            expected = None
        print(json.dumps({"torch": "torch" in sys.modules, "peaks": meter.peaks(), "gpu": environment.gpu_info(),
                          "expected": expected}))
    """)
    assert not seen["torch"], "measuring must not import torch"
    peaks = seen["peaks"]
    assert peaks["peak_gpu_mem_bytes"] is None and peaks["peak_gpu_reserved_bytes"] is None
    if nvml_sees_a_gpu():
        assert peaks["peak_gpu_device_used_bytes"] > 0
        assert seen["gpu"]["name"] and seen["gpu"] == {**seen["expected"], "cuda": None}
    else:  # NVML was asked, and why it gave nothing is said
        assert peaks["peak_gpu_device_used_bytes"] is None
        assert (peaks.get("gpu_memory_note") or "").startswith("NVML"), peaks


def gguf_run(tmp_path: Path, tiny_model: Path) -> dict:
    """A real llamacpp run on a .gguf file (torch never imported for the model), its summary."""
    from llmopt.models import gguf

    path = gguf.convert(str(tiny_model), "q8_0").path
    out = tmp_path / "gguf"
    result = run_cli("llmopt.run", "--strategy", "llamacpp", "--model", path, "--dataset", "sample", "--limit", "2",
                     "--max-new-tokens", "4", "--ignore-eos", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {**read_json(out / "summary.json"), "env": read_json(out / "env.json")}


def test_a_gguf_run_on_a_cpu_build_reads_no_gpu(tmp_path: Path, tiny_model: Path):
    """llama.cpp built without CUDA runs on the CPU: every GPU figure null, the energy the CPU's (RAPL)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("llama.cpp was built with CUDA here: test_a_gguf_run_on_cuda_is_measured_through_nvml")
    summary = gguf_run(tmp_path, tiny_model)
    assert summary["engine"]["device"] == "cpu"
    assert summary["peak_gpu_device_used_bytes"] is None and summary["gpu_memory_note"] is None
    assert summary.get("gpu_memory_bytes") is None
    assert summary["energy_source"] == "rapl" or "RAPL" in summary["energy_note"]


@pytest.mark.gpu
def test_a_gguf_run_on_cuda_is_measured_through_nvml(tmp_path: Path, tiny_model: Path):
    """llama.cpp built with CUDA on a .gguf file: the device, its memory and its energy from NVML, without torch."""
    llama_cpp = pytest.importorskip("llama_cpp")
    if not llama_cpp.llama_supports_gpu_offload():
        pytest.skip("llama-cpp-python was built without CUDA (CMAKE_ARGS=-DGGML_CUDA=on)")
    summary = gguf_run(tmp_path, tiny_model)
    assert summary["engine"]["device"] == "cuda"
    assert summary["peak_gpu_device_used_bytes"] > 0 and summary["gpu_memory_source"].startswith("device")
    assert summary["gpu_device_idle_bytes"] is not None
    assert summary["device"] == summary["env"]["gpu"]["name"]
    assert summary["energy_source"] == "nvml" or "NVML" in summary["energy_note"]


# 3. no CPU joules for a GPU run --------------------------------------------------------------------------------------

GPU_ENGINE = '''
from llmopt.measure.memory import MemoryScope
from llmopt.strategies.baseline import LeadStrategy


class OutsideTorch(LeadStrategy):
    """An engine on one GPU allocating on its own, as llama.cpp built with CUDA declares itself."""

    name = "outside-torch"

    def memory_scope(self):
        return MemoryScope(allocator=False, devices=1)
'''


def test_a_gpu_run_without_an_nvml_reading_has_no_energy_rather_than_the_cpus(tmp_path: Path):
    """A real run whose engine is on a GPU: where NVML gives no reading, energy is null with the reason, never the
    CPU package's RAPL joules in the same J/doc column."""
    engine = tmp_path / "engine.py"
    engine.write_text(GPU_ENGINE)
    out = tmp_path / "run"
    result = run_cli("llmopt.run", "--strategy", f"{engine}:OutsideTorch", "--dataset", "sample", "--limit", "2",
                     "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["energy_source"] != "rapl"
    if not nvml_sees_a_gpu():
        assert summary["energy_j"] is None and "GPU run without an NVML energy reading" in summary["energy_note"]
        assert summary["gpu_memory_note"] in summary["energy_note"]

    meter = EnergyMeter()
    meter.start([], on_gpu=True, gpu_note="NVML unavailable: NVMLError_LibraryNotFound")
    meter.stop()
    figures = meter.figures()
    assert figures["energy_j"] is None and figures["energy_source"] is None
    assert "NVML unavailable: NVMLError_LibraryNotFound" in figures["energy_note"]


# 7. vLLM's memory: weights + KV cache, beside the device's reservation -----------------------------------------------


def test_vllm_memory_is_its_weights_and_kv_cache_not_its_reservation():
    """vLLM on an H200 reserves gpu_memory_utilization of the card (~127 GB) whatever the model: the summary's
    memory figure is its weights plus the KV cache it allocated; NVML's figure less the idle use is what it reserved."""
    from llmopt.reports.rows import Row
    from llmopt.reports.tables import main_table
    from llmopt.runner import summary

    # Llama-2-7B in fp16 on an H200 at gpu_memory_utilization 0.9: 7,000 blocks of 16 tokens, 512 KiB a token
    weights, kv_bytes = 13_476_839_424, 112_000 * 32 * 2 * 32 * 128 * 2
    describe = {"device": "cuda", "batching": "engine", "weights_bytes": weights, "kv_cache_bytes": kv_bytes,
                "engine_memory_bytes": weights + kv_bytes}  # fmt: skip
    session = {"event": "session", "load_s": 30.0, "run_s": 10.0, "describe": describe,
               **memory.gpu_figures(None, None, 127_000_000_000, memory.MemoryScope(allocator=False)),
               "gpu_device_idle_bytes": 600_000_000, "peak_gpu_device_reserved_bytes": 126_400_000_000}  # fmt: skip
    identity = {"strategy": "vllm", "model": "meta-llama/Llama-2-7b-hf", "dataset": "sample", "batch_size": 1,
                "prompt": "published", "max_new_tokens": 8, "sampling": "greedy", "seed": 0, "ignore_eos": True}  # fmt: skip
    built = summary.build(identity, 1, [], [session], "NVIDIA H200")
    assert built.get("gpu_memory_bytes") == weights + kv_bytes, "vLLM's memory is its weights and KV cache"
    assert built["gpu_memory_source"] == "engine: weights + KV cache"
    assert built["peak_gpu_device_used_bytes"] == 127_000_000_000, "the contract's key keeps NVML's raw figure"
    assert built["gpu_device_idle_bytes"] == 600_000_000
    assert built["peak_gpu_device_reserved_bytes"] == 126_400_000_000
    assert built["peak_gpu_mem_bytes"] is None

    row = Row("vllm", "vllm", 1, {**built, "status": "ok"}, Path("."))
    line = next(x for x in main_table([row]).splitlines() if x.startswith("| vllm |"))
    assert f"{(weights + kv_bytes) / 2**20:,.0f} / {126_400_000_000 / 2**20:,.0f}" in line, "model / device reserved"

    # transformers in this process: its allocator's peak, as before
    own = summary.gpu_memory({"device": "cuda"}, {"peak_gpu_mem_bytes": 5 << 30, "peak_gpu_device_reserved_bytes": 7 << 30})
    assert own == {"gpu_memory_bytes": 5 << 30, "gpu_memory_source": "allocator peak"}
    # vLLM on a CPU: no GPU figure at all
    assert summary.gpu_memory({**describe, "device": "cpu"}, {})["gpu_memory_bytes"] is None

    # what the strategy reports: the KV cache from vLLM's blocks, the idle use subtracted from NVML's figure
    from llmopt.strategies.vllm import engine_memory, kv_cache_size

    class Config:  # Llama-2-7B's config.json
        num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, vocab_size = 32, 4096, 11008, 32, 32000

    assert kv_cache_size(Config(), 7000, 16, "auto", "float16") == (kv_bytes, 112_000)
    assert kv_cache_size(Config(), 7000, 16, "fp8_e4m3", "float16") == (kv_bytes // 2, 112_000)
    assert engine_memory(weights, kv_bytes)["engine_memory_bytes"] == describe["engine_memory_bytes"]
    assert memory.device_reserved(127_000_000_000, 600_000_000)["peak_gpu_device_reserved_bytes"] == 126_400_000_000


@pytest.mark.gpu
def test_vllm_on_cuda_reports_weights_and_kv_cache_below_its_reservation(tmp_path: Path):
    pytest.importorskip("vllm")
    out = tmp_path / "vllm"
    result = run_cli("llmopt.run", "--strategy", "vllm", "--model", "tiny", "--dataset", "sample", "--limit", "4",
                     "--max-new-tokens", "8", "--ignore-eos", "--gpu-memory-utilization", "0.3", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    engine = summary["engine"]
    assert summary["gpu_memory_source"] == "engine: weights + KV cache"
    assert summary["gpu_memory_bytes"] == engine["weights_bytes"] + engine["kv_cache_bytes"]
    assert summary["gpu_device_idle_bytes"] is not None
    assert summary["gpu_memory_bytes"] <= summary["peak_gpu_device_reserved_bytes"] <= summary["peak_gpu_device_used_bytes"]


# 9. MIG ----------------------------------------------------------------------------------------------------------------

A100 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
MIG_A = "MIG-11111111-0000-0000-0000-000000000000"
MIG_B = "MIG-22222222-0000-0000-0000-000000000000"


def mig_machine() -> list[nvml.NvmlDevice]:
    """As nvml_devices() lists them: an A100 in MIG mode with two instances, then an H100."""
    return [
        nvml.NvmlDevice(A100, "00000000:17:00.0", "a100", mig_mode=True),
        nvml.NvmlDevice(MIG_A, None, "mig-a", parent=A100, mig_ids=(1, 0)),
        nvml.NvmlDevice(MIG_B, None, "mig-b", parent=A100, mig_ids=(2, 0)),
        nvml.NvmlDevice("GPU-bbbbbbbb-0000-0000-0000-000000000000", "00000000:18:00.0", "h100"),
    ]


def handles(env: str) -> list:
    wanted = nvml.visible(8, env=env)
    return [d.handle if d else None for d in nvml.select(wanted, mig_machine())]


def test_mig_instances_are_read_where_cuda_sees_them():
    """A GPU in MIG mode is, to CUDA, a MIG instance: an index or the GPU's UUID gives its first instance, a MIG
    UUID (or CUDA 11's MIG-GPU-uuid/gi/ci) that instance; never the parent's memory and name."""
    assert handles("0") == ["mig-a"], "index 0 of a GPU in MIG mode is its first instance, not the whole A100"
    assert handles("1") == ["h100"], "indices count whole GPUs"
    assert handles(MIG_B) == ["mig-b"]
    assert handles(A100) == ["mig-a"]
    assert handles(f"MIG-{A100}/2/0") == ["mig-b"]
    assert handles(f"MIG-{A100}/3/0") == [None]
    assert handles("1,0") == ["h100", "mig-a"]
    assert nvml.visible(4, env="1,-1,0") == [nvml.CudaDevice(None, None, 1)], "CUDA stops at an invalid entry"
    # torch's description of the MIG device (its UUID without the prefix) finds the instance too
    assert [d.handle for d in nvml.select([nvml.CudaDevice(MIG_B.removeprefix("MIG-"), None)], mig_machine())] == ["mig-b"]


def test_no_roofline_for_a_mig_slice():
    arch = {"layers": 32, "hidden": 4096, "intermediate": 11008, "heads": 32, "kv_heads": 32, "head_dim": 128,
            "vocab": 32000}  # fmt: skip
    engine = {"device": "cuda", "dtype": "float16", "architecture": arch}
    whole = roofline.for_summary("NVIDIA A100-SXM4-80GB", engine, "default", 1, [(500, 100)])
    assert whole["roofline_gpu"] == "A100-80GB" and whole["roofline_docs_per_sec"] > 0
    for name in ("NVIDIA A100-SXM4-80GB MIG 1g.10gb", "NVIDIA H100 80GB HBM3 MIG 3g.40gb"):
        sliced = roofline.for_summary(name, engine, "default", 1, [(500, 100)])
        assert sliced["roofline_docs_per_sec"] is None and sliced["roofline_gpu"] is None
        assert "MIG slice" in sliced["roofline_note"]
    assert roofline.gpu_for_device("NVIDIA A100-SXM4-80GB MIG 1g.10gb") is None


@pytest.mark.gpu
def test_a_mig_slice_is_named_and_gets_no_roofline(tmp_path: Path):
    import torch

    if "MIG" not in torch.cuda.get_device_name(0):
        pytest.skip("the visible GPU is not a MIG instance")
    out = tmp_path / "mig"
    result = run_cli("llmopt.run", "--strategy", "default", "--model", "tiny", "--dataset", "sample", "--limit", "2",
                     "--max-new-tokens", "4", "--ignore-eos", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert "MIG" in summary["device"] and summary["roofline_docs_per_sec"] is None
    assert "MIG slice" in summary["roofline_note"] and summary["peak_gpu_device_used_bytes"] > 0


# 11. FP8 weights -------------------------------------------------------------------------------------------------------


def test_vllm_fp8_counts_linear_weights_in_one_byte(tiny_model: Path):
    """vllm-fp8 quantizes a 16-bit checkpoint's linear layers to FP8 as it loads: one byte a weight (and a float32
    scale a matrix); the embedding, the LM head and the norms stay 16-bit."""
    from llmopt.models import resolve
    from llmopt.models.architecture import architecture_of
    from llmopt.strategies.vllm import loaded_weights_bytes

    config = resolve.load_config("tiny", str(tiny_model), False)
    sixteen, source = loaded_weights_bytes(config, str(tiny_model), "vllm", "bfloat16", None)
    fp8, fp8_source = loaded_weights_bytes(config, str(tiny_model), "vllm-fp8", "bfloat16", "fp8")
    arch = Architecture(**architecture_of(config))
    assert source == fp8_source == "checkpoint"
    assert fp8 == sixteen - arch.layer_params + 4 * 7 * arch.layers  # 7 matrices a layer: q, k, v, o, gate, up, down
    # random weights (no checkpoint): the architecture at the FP8 format, which the roofline uses too
    random_fp8, how = loaded_weights_bytes(config, None, "vllm-fp8", "bfloat16", "fp8")
    assert how == "architecture" and random_fp8 < loaded_weights_bytes(config, None, "vllm", "bfloat16", None)[0]


@pytest.mark.gpu
def test_vllm_fp8_on_cuda_reports_one_byte_linear_weights(tmp_path: Path, tiny_model: Path):
    pytest.importorskip("vllm")
    import torch

    if torch.cuda.get_device_capability(0) < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9+")
    from llmopt.models import resolve
    from llmopt.strategies.vllm import loaded_weights_bytes

    out = tmp_path / "fp8"
    result = run_cli("llmopt.run", "--strategy", "vllm-fp8", "--model", "tiny", "--dataset", "sample", "--limit", "2",
                     "--max-new-tokens", "4", "--ignore-eos", "--gpu-memory-utilization", "0.3", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    engine = read_json(out / "summary.json")["engine"]
    config = resolve.load_config("tiny", str(tiny_model), False)
    sixteen, _ = loaded_weights_bytes(config, str(tiny_model), "vllm", engine["dtype"], None)
    assert engine["quantization"] == "fp8" and engine["weights_bytes"] < sixteen


# 12. Ray cells ---------------------------------------------------------------------------------------------------------


def test_ray_cells_number_gpus_in_pci_order_as_local_cells_do():
    """Ray hands a task its GPUs as NVML (PCI-order) indices; CUDA's default order puts the fastest GPU first."""
    from llmopt.sweeps.ray_cluster import cell_env

    assert cell_env({"OMP_NUM_THREADS": "8"}, {}) == {"OMP_NUM_THREADS": "8", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert cell_env({}, {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"


def test_env_json_records_the_gpus_a_run_was_given(tmp_path: Path):
    out = tmp_path / "lead"
    env = {**cli_env(), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    result = subprocess.run([sys.executable, "-m", "llmopt.run", "--strategy", "lead", "--dataset", "sample", "--limit",
                             "1", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    recorded = read_json(out / "env.json")
    assert recorded["cuda_device_order"] == "PCI_BUS_ID"
    assert recorded["cuda_visible_devices"] == env.get("CUDA_VISIBLE_DEVICES")
