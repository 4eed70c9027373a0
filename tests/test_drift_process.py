"""`llmopt drift` loads no model in its own process: the reference runs in a child, as each mode does, so on a GPU no
CUDA context of the parent's stays on the card while a mode's engine (vLLM) wants its memory. And the drift arithmetic
(quality/drift.py, which runs no strategy) gives the figures it must on distributions worked out by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, read_json

from llmopt.quality.drift import mode_drift, position_kl, reference_doc

# The parent process of `llmopt drift`, run as the command runs it; it reports which heavy libraries it imported.
PARENT = """
import json, sys
from llmopt.commands import drift
code = drift.entry("llmopt drift", sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "vllm", "llama_cpp", "bitsandbytes") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""

ARGS = ["--model", "tiny", "--reference", "default", "--dataset", "sample", "--limit", "3", "--dtype", "float32",
        "--max-new-tokens", "8"]  # fmt: skip


def run_parent(*args: str | Path) -> tuple[dict, subprocess.CompletedProcess[str]]:
    done = subprocess.run([sys.executable, "-c", PARENT, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=cli_env(), timeout=600)  # fmt: skip
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done


def test_the_parent_loads_no_model_and_the_reference_against_itself_is_zero(tmp_path: Path):
    out = tmp_path / "d"
    parent, done = run_parent(*ARGS, "--strategies", "default", "--out", out)
    assert parent["code"] == 0, done.stderr
    assert parent["heavy"] == [], f"the parent process of llmopt drift imported {parent['heavy']}"
    (reference,) = read_json(out / "summary.json")["modes"]
    assert reference["strategy"] == "default" and reference["status"] == "ok"
    assert reference["kl_mean"] == 0.0 and reference["kl_p99"] == 0.0 and reference["top1_agreement"] == 1.0
    assert reference["positions"] == sum(len(d["continuation"]) for d in read_json(out / "reference.json")["docs"]) > 3
    # Run again: the cached reference is reused, with no child started for it.
    before = (out / "reference.json").stat().st_mtime_ns
    parent, done = run_parent(*ARGS, "--strategies", "default", "--out", out)
    assert parent["code"] == 0 and (out / "reference.json").stat().st_mtime_ns == before
    assert "reference default on" not in done.stderr


def test_a_reference_that_cannot_run_here_is_one_line_and_its_exit_code(tmp_path: Path):
    """The child's refusal is the command's: exit code 69, its one line, no traceback, no second complaint."""
    parent, done = run_parent(*ARGS[:2], "--reference", "flash-attn", *ARGS[4:], "--strategies", "default",
                              "--out", tmp_path / "d")  # fmt: skip
    if parent["code"] == 0:
        pytest.skip("this host runs flash-attn (a CUDA GPU with flash-attn installed)")
    assert parent["code"] == 69, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and "cannot run here" in lines[-1]
    assert [line for line in lines if "error" in line] == [lines[-1]]


@dataclass
class Position:
    """One position as a strategy's score_continuation gives it (the fields quality/drift.py reads)."""

    actual: float
    argmax: int
    top: dict[int, float] = field(default_factory=dict)
    wanted: dict[int, float] = field(default_factory=dict)


def test_drift_arithmetic_by_hand():
    ln = math.log
    # The reference: token 1 with p 0.7, token 2 with 0.2 (0.1 for all others), at one position of its summary.
    ref = reference_doc("d", "prompt", [1], [Position(actual=ln(0.7), argmax=1, top={2: ln(0.2), 1: ln(0.7)})])
    assert ref.top_ids == [[1, 2]] and ref.argmax == [1]
    # The same distribution: exactly 0, full agreement, perplexity 1/0.7.
    same = mode_drift("same", "m", [ref], [[Position(ln(0.7), 1, wanted={1: ln(0.7), 2: ln(0.2)})]], None)
    assert same.kl_mean == 0.0 and same.top1_agreement == 1.0 and same.unlisted_mass == 0.0
    assert math.isclose(same.perplexity, 1 / 0.7) and "full logits" in same.kl_method
    # A mode with 0.5 and 0.4 (0.1 for the rest): KL = 0.7 ln(0.7/0.5) + 0.2 ln(0.2/0.4) + 0.1 ln(0.1/0.1).
    other = mode_drift("q", "m", [ref], [[Position(ln(0.5), 1, wanted={1: ln(0.5), 2: ln(0.4)})]], 20)
    assert math.isclose(other.kl_mean, 0.7 * ln(0.7 / 0.5) + 0.2 * ln(0.2 / 0.4), rel_tol=1e-12)
    assert other.kl_p99 == other.kl_mean and math.isclose(other.perplexity, 2.0) and "top 20" in other.kl_method
    # A mode that does not list token 2 (vLLM's top tokens): token 2 joins the rest bucket, its mass is unlisted.
    kl, missing = position_kl([1, 2], [ln(0.7), ln(0.2)], {1: ln(0.5)})
    assert math.isclose(kl, 0.7 * ln(0.7 / 0.5) + 0.3 * ln(0.3 / 0.5)) and math.isclose(missing, 0.2)
    # A mode that picks another token: no agreement.
    picks_2 = mode_drift("p", "m", [ref], [[Position(ln(0.3), 2, wanted={1: ln(0.3), 2: ln(0.6)})]], None)
    assert picks_2.top1_agreement == 0.0 and picks_2.kl_mean > other.kl_mean
