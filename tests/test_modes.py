"""Today's loading modes on the tiny model: llama.cpp (GGUF), torchao, speculative decoding; FP8's refusal here.

Values, not keys: GGUF token counts against the transformers tokenizer, GGUF outputs against transformers', torchao
layers that really are quantized, and speculative outputs equal to their plain mode's (the promise of speculation).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_unavailable, assert_usage_error, cli_env, read_json, read_jsonl, run_cli

from llmopt.documents.datasets import load_dataset
from llmopt.documents.prompts import PROMPTS

DOCS, TOKENS = 10, 8


def run(tmp_path: Path, strategy: str, *extra: str, name: str | None = None, limit: int = DOCS) -> tuple[dict, list[dict]]:
    out = tmp_path / (name or strategy)
    result = run_cli(
        "llmopt.run", "--strategy", strategy, "--model", "tiny", "--dataset", "sample", "--limit", str(limit),
        "--max-new-tokens", str(TOKENS), "--ignore-eos", "--out", out, *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return read_json(out / "summary.json"), read_jsonl(out / "records.jsonl")


def words(records: list[dict]) -> list[str]:
    return [" ".join(r["prediction"].split()) for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """transformers in float32: what the other modes are held against."""
    return run(tmp_path_factory.mktemp("reference"), "default", "--dtype", "float32")[1]


# --- llama.cpp ----------------------------------------------------------------------------------------------------


def test_gguf_f16_is_the_same_model(tmp_path: Path, tiny_model: Path, reference: list[dict]):
    """Converted to GGUF in 16 bits, the tiny model gives transformers' greedy outputs and its token counts: the
    tensor names, the rotary layout of q and k, the tokenizer and its BOS are all carried over."""
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    summary, records = run(tmp_path, "llamacpp", "--gguf-type", "f16")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    docs = load_dataset("sample")[:DOCS]
    assert [r["prompt_tokens"] for r in records] == [
        len(tokenizer(PROMPTS["published-hf"](d.document))["input_ids"]) for d in docs
    ]
    assert words(records) == words(reference)
    engine = summary["engine"]
    assert engine["batching"] == "sequential" and summary["batch_size"] == 1 and engine["gguf_source"] == "converted"
    assert engine["quantization"] == "gguf-f16" and 0 < engine["streamed_weight_bytes"] < engine["weights_bytes"]
    assert summary["ttft_s_p50"] > 0 and summary["tpot_ms_p50"] > 0, "llama.cpp's own timings"


def test_gguf_q8_0_agrees_with_float32_on_most_documents(tmp_path: Path, reference: list[dict]):
    pytest.importorskip("llama_cpp")
    summary, records = run(tmp_path, "llamacpp", "--gguf-type", "q8_0")
    same = sum(a == b for a, b in zip(words(records), words(reference), strict=True))
    # Random weights make near-ties that 8-bit rounding can flip; a broken conversion agrees on none.
    assert same > DOCS // 2, f"{same} of {DOCS}"
    from llmopt.models import gguf, resolve

    f16_bytes, _ = gguf.tensor_bytes(gguf.convert(resolve.resolve("tiny"), "f16").path)
    assert summary["engine"]["weights_bytes"] < 0.6 * f16_bytes, "8.5 bits per weight (34 bytes per 32), not 16"


def test_gguf_types_cache_and_files(tmp_path: Path):
    pytest.importorskip("llama_cpp")
    first, _ = run(tmp_path, "llamacpp", "--gguf-type", "q4_k_m", name="first", limit=2)
    again, _ = run(tmp_path, "llamacpp", "--gguf-type", "q4_k_m", name="again", limit=2)
    assert first["status"] == again["status"] == "ok"
    assert again["engine"]["gguf_conversion_s"] == 0.0, "converted once, then taken from the cache"
    from llmopt.models import gguf, resolve

    path = gguf.cache_path(resolve.resolve("tiny"), "q4_0")
    converted = gguf.convert(resolve.resolve("tiny"), "q4_0")
    assert converted.path == path and path.is_file()
    out = tmp_path / "file"
    result = run_cli("llmopt.run", "--strategy", "llamacpp", "--model", path, "--dataset", "sample", "--limit", "2",
                     "--max-new-tokens", "4", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    engine = read_json(out / "summary.json")["engine"]
    assert engine["gguf_source"] == "file" and engine["quantization"] == "gguf-q4_0"


def variant(tiny_model: Path, out: Path, kind: str) -> Path:
    """The tiny model's tokenizer under another real layout: `qwen2` (biases on q/k/v, tied embeddings, an embedding
    padded past the tokenizer as Qwen2's is, one added non-special token), or `llama3-rope` (Llama-3.1's frequency
    scaling, with an original context short enough that every kind of frequency is scaled)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    shape = {k: v for k, v in json.loads((tiny_model / "config.json").read_text()).items()
             if k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                      "bos_token_id", "eos_token_id")}  # fmt: skip
    torch.manual_seed(1)
    if kind == "qwen2":  # transformers reads the tokenizer as Qwen2's (its digit-by-digit split) under model_type qwen2
        tokenizer.save_pretrained(out)
        (out / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
        tokenizer = AutoTokenizer.from_pretrained(out)
        tokenizer.add_tokens(["<extra_0>"])
        # initializer_range 0.15, not 0.02: logits peaked enough that a wrong rotary layout shows in the KL
        config = Qwen2Config(vocab_size=len(tokenizer) + 61, tie_word_embeddings=True, initializer_range=0.15, **shape)
        model = Qwen2ForCausalLM(config)
    else:
        scaling = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
        config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=False, rope_parameters=scaling,
                             initializer_range=0.15, **shape)  # fmt: skip
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["qwen2", "llama3-rope"])
def test_gguf_conversion_keeps_other_layouts(tmp_path: Path, tiny_model: Path, kind: str):
    """Converted in 16 bits, the model's next-token distributions along its own greedy summaries are transformers'
    in float32 up to 16-bit rounding (llmopt drift, full logits on both sides), and llama.cpp tokenizes as
    transformers does, the added token included."""
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from llmopt.models import gguf

    folder = variant(tiny_model, tmp_path / kind, kind)
    converted = gguf.convert(str(folder), "f16").path
    out = tmp_path / "drift"
    result = run_cli("llmopt.drift", "--model", folder, "--reference", "default", "--dtype", "float32", "--dataset",
                     "sample", "--limit", "3", "--max-new-tokens", "16", "--strategies", f"llamacpp={converted}",
                     "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    modes = {m["strategy"]: m for m in read_json(out / "summary.json")["modes"]}
    assert modes["llamacpp"]["status"] == "ok", modes["llamacpp"]
    # 16-bit rounding gives about 4e-6 here; a dropped rope scaling gave 1.1, an unpadded vocabulary no load at all.
    # Top-1 agreement was 1.0 here (a dropped scaling: 0.04); a GPU build's f16 arithmetic may flip a near-tie.
    assert modes["llamacpp"]["kl_mean"] < 1e-3 and modes["llamacpp"]["top1_agreement"] >= 0.9, modes["llamacpp"]
    import llama_cpp

    text = "Summarize <extra_0> the above text." if kind == "qwen2" else "Summarize the above text."
    vocab = llama_cpp.Llama(model_path=str(converted), vocab_only=True, verbose=False)
    expected = AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False)["input_ids"]
    assert vocab.tokenize(text.encode(), add_bos=False, special=True) == expected
    total, streamed = gguf.tensor_bytes(converted)
    assert (streamed == total) == (kind == "qwen2"), "tied embeddings are the output projection, read whole"


def test_llamacpp_prefills_every_document_whole():
    """llama-cpp-python reuses the KV cache of a prefix shared with the previous prompt; llmopt resets it, so a
    document's TTFT is its whole prompt's prefill, as in every other mode. The context is the model's own (2048 for
    tiny) or --max-model-len."""
    pytest.importorskip("llama_cpp")
    import llama_cpp

    from llmopt.strategies.base import GenerationParams
    from llmopt.strategies.llamacpp import LlamaCppStrategy

    prompt = PROMPTS["published-hf"](load_dataset("sample")[0].document)
    for options, n_ctx in (({}, 2048), ({"max_model_len": 512}, 512), ({"max_model_len": 128}, 256)):
        strategy = LlamaCppStrategy("tiny", gguf_type="f16", **options)
        strategy.load()
        try:
            assert strategy.describe()["n_ctx"] == n_ctx
            for _ in range(2):  # the same prompt twice: all of it could be reused the second time
                (generation,) = strategy.generate_batch([prompt], GenerationParams(max_new_tokens=2))
                evaluated = llama_cpp.llama_perf_context(strategy._llm.ctx).n_p_eval
                assert evaluated == generation.prompt_tokens > 100
        finally:
            strategy.close()


def test_a_llamacpp_run_reads_its_gguf_files_without_importing_opencv(tmp_path: Path):
    """The `gguf` package imports mistral_common (installed with vLLM), which imports OpenCV: the process that times
    llama.cpp should load what llama.cpp alone loads. A llamacpp run reads a GGUF file's facts and converts checkpoints
    in child processes: its own process never imports them, and the facts are those the in-process readers give."""
    pytest.importorskip("llama_cpp")
    from llmopt.models import gguf, packaged

    outs = {"file": tmp_path / "file", "converted": tmp_path / "converted"}
    runs = [["--model", "smollm2-135m", "--out", str(outs["file"])],
            ["--model", "tiny", "--gguf-type", "q8_0", "--out", str(outs["converted"])]]  # fmt: skip
    code = (
        "import json, sys\n"
        "from llmopt.commands.run import main\n"
        f"for extra in {runs!r}:\n"
        "    assert main(['--strategy', 'llamacpp', '--dataset', 'sample', '--limit', '1', '--max-new-tokens', '2',"
        " *extra]) == 0\n"
        "print(json.dumps([m for m in ('gguf', 'mistral_common', 'cv2') if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    path = packaged.gguf_file("smollm2-135m")
    engine = read_json(outs["file"] / "summary.json")["engine"]
    assert engine["n_ctx_train"] == gguf.context_length(path)
    assert (engine["weights_bytes"], engine["streamed_weight_bytes"]) == gguf.tensor_bytes(path)
    assert engine["gguf_type"] == "q4_1" and engine["gguf_source"] == "file"
    converted = read_json(outs["converted"] / "summary.json")["engine"]
    assert converted["quantization"] == "gguf-q8_0" and converted["gguf_source"] == "converted"


def test_llamacpp_refusals(tmp_path: Path):
    pytest.importorskip("llama_cpp")
    assert_usage_error(run_cli("llmopt.run", "--strategy", "default", "--gguf-type", "q8_0", "--dataset", "sample"),
                       "--gguf-type applies to llamacpp only")  # fmt: skip
    assert_usage_error(run_cli("llmopt.run", "--strategy", "llamacpp", "--model", "tiny", "--batch-size", "4"),
                       "one document at a time", "--batch-size must be 1")  # fmt: skip
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 1}))
    assert_usage_error(run_cli("llmopt.run", "--strategy", "llamacpp", "--model", folder, "--dataset", "sample",
                               "--out", tmp_path / "x"), "'gpt2' checkpoints to GGUF", "llama, mistral, qwen2")  # fmt: skip


# --- torchao --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["torchao-int8", "torchao-int4"])
def test_torchao_layers_are_quantized(tmp_path: Path, strategy: str):
    pytest.importorskip("torchao")
    import torch

    from llmopt import strategies

    summary, records = run(tmp_path, strategy, limit=3)
    assert summary["status"] == "ok" and all(r["output_tokens"] == TOKENS for r in records)
    cls = strategies.resolve(strategy)
    loaded = cls("tiny")
    loaded.load()
    try:
        weight = loaded._model.model.layers[0].mlp.down_proj.weight
        names, _ = weight.__tensor_flatten__()
        stored = {n: getattr(weight, n) for n in names}
        # int8 storage, or on CUDA int4 packed by tinygemm into int32 words (eight weights each)
        packed = (torch.int32,) if strategy == "torchao-int4" and loaded.describe()["device"] == "cuda" else ()
        assert "qdata" in stored and stored["qdata"].dtype in (torch.int8, torch.uint8, *packed), (type(weight), names)
        if strategy == "torchao-int4" and stored["qdata"].dtype == torch.int8:  # CPU: int4 values in int8 storage
            assert int(stored["qdata"].min()) >= -8 and int(stored["qdata"].max()) <= 7
        # One byte per weight (plus group scales) against two in 16 bits; the embedding and head are not quantized.
        stored_bytes = sum(t.numel() * t.element_size() for t in stored.values())
        assert stored_bytes < 0.6 * 2 * weight.numel()
        # Against the same model unquantized at the run's dtype: bf16 on a CPU with native bf16 (and on CUDA),
        # float32 on one without, where the unquantized embedding and head take 4 bytes a weight.
        width = torch.empty(0, dtype=getattr(torch, summary["dtype"])).element_size()
        assert summary["dtype"] == loaded.describe()["dtype"]
        unquantized = sum(p.numel() * width for p in loaded._model.parameters())
        assert summary["engine"]["weights_bytes"] < unquantized, (summary["dtype"], summary["engine"]["weights_bytes"])
    finally:
        loaded.close()


# --- speculative decoding ---------------------------------------------------------------------------------------------


def test_prompt_lookup_gives_the_plain_outputs(tmp_path: Path, reference: list[dict]):
    summary, records = run(tmp_path, "prompt-lookup", "--dtype", "float32")
    assert words(records) == words(reference), "speculative decoding must not change greedy outputs"
    spec = summary["engine"]["speculative"]
    assert spec["drafted_tokens"] >= spec["accepted_tokens"] >= 0 and spec["forward_passes"] <= DOCS * TOKENS
    assert spec["accepted_tokens"] == DOCS * TOKENS - spec["forward_passes"]


def test_vllm_ngram_gives_the_plain_outputs(tmp_path: Path):
    pytest.importorskip("vllm")
    common = ("--dtype", "float32", "--enforce-eager")
    plain = run(tmp_path, "vllm", *common)[1]
    summary, records = run(tmp_path, "vllm-ngram", *common)
    assert words(records) == words(plain)
    spec = summary["engine"]["speculative"]
    assert spec["drafted_tokens"] >= spec["accepted_tokens"] >= 0 and spec["counted_from"] == "vLLM's spec_decode counters"


# --- FP8: Ada and Hopper only -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["vllm-fp8", "torchao-fp8"])
def test_fp8_modes_say_what_they_need(strategy: str):
    from llmopt.strategies import cuda_capability

    capability = cuda_capability()
    if capability is not None and capability >= (8, 9):
        pytest.skip("this GPU runs FP8 (see tests/test_gpu.py)")
    assert_unavailable(run_cli("llmopt.run", "--strategy", strategy, "--dataset", "sample"), "compute capability 8.9")
