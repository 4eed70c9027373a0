"""Every strategy that runs on a CPU, end to end through the command line on the tiny model, values checked.

On a CUDA host the same runs go to the GPU; the checks read what the host is (GPU or CPU, its dtype) instead of
assuming this developer's machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, read_json, read_jsonl, run_cli

from llmopt.documents.datasets import load_dataset
from llmopt.documents.prompts import PROMPTS
from llmopt.quality.rouge import score_pair

LIMIT, NEW_TOKENS, BATCH = 6, 8, 3


def run_tiny(tmp_path: Path, strategy: str, *extra: str, limit: int = LIMIT) -> tuple[dict, list[dict], Path]:
    out = tmp_path / strategy.replace("/", "_").replace(":", "_")
    result = run_cli(
        "llmopt.run", "--strategy", strategy, "--model", "tiny", "--dataset", "sample", "--limit", str(limit),
        "--max-new-tokens", str(NEW_TOKENS), "--batch-size", str(BATCH), "--ignore-eos", "--out", out, *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "docs/sec" in result.stdout and "ROUGE-1" in result.stdout, result.stdout
    return read_json(out / "summary.json"), read_jsonl(out / "records.jsonl"), out


def check_common(summary: dict, records: list[dict], tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    docs = load_dataset("sample")[:LIMIT]
    assert summary["status"] == "ok"
    assert (summary["n_docs"], summary["n_completed"], summary["n_oom"], summary["n_skipped"]) == (LIMIT, LIMIT, 0, 0)
    assert [r["id"] for r in records] == [d.id for d in docs], "records come back in dataset order"
    assert summary["docs_per_sec"] == pytest.approx(LIMIT / summary["generate_s"])
    assert summary["output_tokens_per_s"] == pytest.approx(LIMIT * NEW_TOKENS / summary["generate_s"])
    assert 0 < summary["generate_s"] <= summary["run_s"]
    assert summary["load_s"] > 0 and summary["warmup_s"] > 0
    assert summary["output_tokens_mean"] == NEW_TOKENS  # --ignore-eos forces the length
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    expected = [len(tokenizer(PROMPTS["published-hf"](d.document))["input_ids"]) for d in docs]
    assert [r["prompt_tokens"] for r in records] == expected
    assert summary["prompt_tokens_mean"] == pytest.approx(sum(expected) / LIMIT)
    assert {r["batch_size"] for r in records} == {BATCH}
    for record in records:
        assert record["rouge1"] == pytest.approx(score_pair(record["prediction"], record["reference"])["rouge1"])
    assert 0 <= summary["rouge1_ci95"][0] <= summary["rouge1"] <= summary["rouge1_ci95"][1] <= 1
    assert summary["peak_rss_bytes"] > 50 * 2**20
    if on_cuda():
        assert summary["engine"]["device"] == "cuda" and summary["peak_gpu_mem_bytes"] > 0
        assert "cores" not in summary["device"]
    else:
        assert summary["engine"]["device"] == "cpu" and summary["peak_gpu_mem_bytes"] is None
        assert "cores" in summary["device"]


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_default_picks_the_hosts_dtype_and_writes_all_files(tmp_path: Path, tiny_model: Path):
    summary, records, out = run_tiny(tmp_path, "default")
    check_common(summary, records, tiny_model)
    if on_cuda():  # the tiny checkpoint is float32: bf16 on a GPU that has it, fp16 on older ones (README, dtype rule)
        import torch

        assert summary["dtype"] == ("bfloat16" if torch.cuda.get_device_capability(0) >= (8, 0) else "float16")
    else:  # emulated bf16 is slower than float32 on CPUs without AVX512-BF16 or AMX
        flags = Path("/proc/cpuinfo").read_text()
        native_bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
        assert summary["dtype"] == ("bfloat16" if native_bf16 else "float32")
    assert summary["engine"]["quantization"] is None
    # transformers' own default attention, as recorded from the loaded model: SDPA for Llama since transformers 4.36
    # with torch 2.1.1 or newer (docs/strategies.md), which is what the study's default ran
    assert summary["engine"]["attn_implementation"] == "sdpa"
    env = read_json(out / "env.json")
    assert env["packages"]["torch"] and env["packages"]["transformers"] and env["cpu_count"] >= 1
    assert "--strategy default" in env["command"]


def test_default_float32_batched_matches_batch_one(tmp_path: Path):
    """Left padding and length grouping must not change greedy outputs, nor send them to the wrong document."""
    _, batched, _ = run_tiny(tmp_path / "b4", "default", "--dtype", "float32", limit=10)
    _, single, _ = run_cli_batch_one(tmp_path / "b1")
    same = sum(a["prediction"] == b["prediction"] for a, b in zip(batched, single, strict=True))
    assert same >= 9, f"only {same} of 10 documents got the same greedy output at batch 1 and batch 3"


def run_cli_batch_one(out: Path) -> tuple[dict, list[dict], Path]:
    result = run_cli(
        "llmopt.run", "--strategy", "default", "--model", "tiny", "--dataset", "sample", "--limit", "10",
        "--max-new-tokens", str(NEW_TOKENS), "--ignore-eos", "--dtype", "float32", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return read_json(out / "summary.json"), read_jsonl(out / "records.jsonl"), out


def test_sdpa(tmp_path: Path, tiny_model: Path):
    summary, records, _ = run_tiny(tmp_path, "sdpa")
    check_common(summary, records, tiny_model)
    assert summary["engine"]["attn_implementation"] == "sdpa"


def test_8bit_loads_int8_weights(tmp_path: Path, tiny_model: Path):
    summary, records, _ = run_tiny(tmp_path, "8bit")
    check_common(summary, records, tiny_model)
    assert summary["engine"]["quantization"]["load_in_8bit"] is True


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_types(tmp_path: Path, tiny_model: Path, quant_type: str):
    summary, records, _ = run_tiny(tmp_path, "4bit", "--bnb-4bit-type", quant_type)
    check_common(summary, records, tiny_model)
    quant = summary["engine"]["quantization"]
    assert quant["load_in_4bit"] is True and quant["bnb_4bit_quant_type"] == quant_type


def test_lead_is_a_real_rouge_floor(tmp_path: Path):
    out = tmp_path / "lead"
    result = run_cli("llmopt.run", "--strategy", "lead", "--dataset", "sample", "--out", out)
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    docs = load_dataset("sample")
    assert summary["n_completed"] == len(docs) and summary["model"] == "none"
    # Hand-written references paraphrase the opening of each article: lead-3 overlaps well, but not fully.
    assert 0.25 < summary["rouge1"] < 0.6
    records = read_jsonl(out / "records.jsonl")
    assert records[0]["prediction"].startswith(docs[0].document.split(".")[0])


def test_user_strategy_from_a_file_and_from_a_module(tmp_path: Path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "from llmopt.strategies.baseline import LeadStrategy\n\n"
        "class FirstSentence(LeadStrategy):\n"
        "    def __init__(self, model, **options):\n"
        "        super().__init__(model, **options)\n"
        "        self.sentences = 1\n"
    )
    out = tmp_path / "file"
    result = run_cli("llmopt.run", "--strategy", f"{plugin}:FirstSentence", "--dataset", "sample", "--limit", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    first = read_jsonl(out / "records.jsonl")[0]
    assert first["prediction"].count(".") == 1
    out = tmp_path / "module"
    target = "llmopt.strategies.baseline:LeadStrategy"
    result = run_cli("llmopt.run", "--strategy", target, "--dataset", "sample", "--limit", "2", "--out", out, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert read_json(out / "summary.json")["n_completed"] == 2


def test_chat_template_prompt_has_one_bos(tmp_path: Path, tiny_model: Path):
    from transformers import AutoTokenizer

    summary, records, _ = run_tiny(tmp_path, "default", "--prompt", "chat", limit=3)
    assert summary["n_completed"] == 3 and summary["prompt"] == "chat"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for doc, record in zip(load_dataset("sample"), records, strict=False):
        message = [{"role": "user", "content": PROMPTS["chat"](doc.document)}]
        ids = tokenizer.apply_chat_template(message, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert ids.count(tokenizer.bos_token_id) == 1
        assert record["prompt_tokens"] == len(ids)


def test_multinomial_sampling_is_the_models_own_distribution(tmp_path: Path):
    summary = run_tiny(tmp_path, "default", "--sampling", "multinomial", "--seed", "7", limit=2)[0]
    generation = summary["engine"]["generation"]
    assert {k: generation[k] for k in ("decoding", "temperature", "top_p", "top_k", "min_p", "seed")} == {
        "decoding": "sampling", "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": 7,
    }  # fmt: skip


def test_a_sampled_runs_warm_up_samples_too(tiny_model: Path):
    """The warm-up decodes as the run does: a sampled run's first sampling step (a kernel's first call, a generator
    made) is untimed warm-up work, not its first timed document's (`vllm bench throughput` warms up with its sampling)."""
    from llmopt.strategies.base import GenerationParams
    from llmopt.strategies.hf import DefaultStrategy

    strategy = DefaultStrategy(str(tiny_model), dtype="float32")
    strategy.load()
    try:
        params = GenerationParams(max_new_tokens=24, temperature=1.0, top_p=1.0, top_k=0, seed=5)
        strategy.warm_up([[PROMPTS["published-hf"](load_dataset("sample")[0].document)]], params)
        generation = strategy.describe()["generation"]  # the settings of the last call: the warm-up's
    finally:
        strategy.close()
    assert {k: generation[k] for k in params.sampling()} == params.sampling()


def test_published_sampling_is_repeatable_with_a_seed(tmp_path: Path):
    runs = [run_tiny(tmp_path / str(i), "default", "--sampling", "published", "--seed", "7", limit=3)[1] for i in range(2)]
    assert [r["prediction"] for r in runs[0]] == [r["prediction"] for r in runs[1]]
