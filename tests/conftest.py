"""Shared helpers: run the real command lines in a subprocess, offline, and read what they wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    # No machine here reaches a model hub: fail fast instead of waiting on the network.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def run_cli(module: str, *args: str | Path, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(),
        timeout=timeout,
    )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from llmopt.models import tiny

    return tiny.ensure("tiny")


@pytest.fixture(scope="session")
def vllm_tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """vLLM on the whole sample with the tiny model at the dtype rule (one engine start, shared: test_vllm.py reads
    its engine batching and skips, test_gpu_logic.py its dtype)."""
    pytest.importorskip("vllm")
    out = tmp_path_factory.mktemp("vllm-tiny") / "vllm"
    result = run_cli(
        "llmopt.run", "--strategy", "vllm", "--model", "tiny", "--dataset", "sample", "--max-new-tokens", "12",
        "--ignore-eos", "--enforce-eager", "--max-model-len", "170", "--batch-size", "4", "--out", out,
    )  # fmt: skip
    return result, out


@pytest.fixture(scope="session")
def default_tiny_auto_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """transformers at the dtype rule, --batch-size auto on five documents (shared: test_random_weights.py reads its
    batch probe, test_gpu_logic.py its dtype)."""
    out = tmp_path_factory.mktemp("default-tiny") / "auto"
    result = run_cli(
        "llmopt.run", "--strategy", "default", "--model", "tiny", "--dataset", "sample", "--limit", "5",
        "--batch-size", "auto", "--max-new-tokens", "4", "--out", out,
    )  # fmt: skip
    return result, out


EXIT_UNAVAILABLE = 69  # a strategy that cannot run on this machine (README, "Exit codes")


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str, code: int = 2) -> None:
    """Exit code 2 (or `code`), one line on stderr naming the problem, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def assert_unavailable(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """A strategy this machine cannot run: one line saying what is missing, exit code 69."""
    assert_usage_error(result, "cannot run here", *fragments, code=EXIT_UNAVAILABLE)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
