"""Tiny checkpoints: Llama-shaped, head size 64, the sizes promised, reused from the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from llmopt.models import tiny


def test_tiny_shape_and_tokenizer(tiny_model: Path):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model)
    assert config.model_type == "llama" and config.hidden_size // config.num_attention_heads == 64
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert config.vocab_size == len(tokenizer)
    text = "Boil the eggs for nine minutes."
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert sum(f.stat().st_size for f in tiny_model.iterdir()) < 8 * 2**20
    assert tiny.ensure("tiny") == tiny_model  # built once, then reused


def test_small_is_about_25m_parameters(tmp_path: Path):
    result = run_cli("llmopt.tiny", tmp_path / "small", "--size", "small")
    assert result.returncode == 0, result.stderr
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(25e6, rel=0.1)
    assert model.config.hidden_size // model.config.num_attention_heads == 64
