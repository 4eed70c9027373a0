"""The suite's own command-line runner (conftest.run_module and tests/preloaded.py's fork server)."""

from __future__ import annotations

import os

import conftest
import pytest
from conftest import START_ENV, cli_env, run_cli


def forks_expected() -> bool:
    """Where run_module should fork: forks not turned off, no CUDA, and a server whose imports printed nothing."""
    if os.environ.get("LLMOPT_TEST_FORKS") == "0" or conftest._has_cuda():
        assert conftest.fork_server("llmopt.run", cli_env()) is None
        return False
    conftest.fork_server("llmopt.run", cli_env())  # started here if this worker has none yet
    server = conftest._fork_server
    assert server is not None and server.process.poll() is None, "the fork server ended"
    if not server.ready:
        pytest.skip(f"the fork server cannot be used on this host: {server.why}")
    return True


def test_command_lines_run_in_the_suites_environment_and_are_forked(monkeypatch: pytest.MonkeyPatch):
    """What in-process imports write to os.environ reaches no command line, and so does not turn the fork server off
    (torch's inductor wrote its cache folder there after a test compiled in-process, and every later run of that
    worker fell back to a plain subprocess that imports torch again)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/written/by/inductor")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # what vLLM's in-process mode writes
    env = cli_env()
    for name in ("TORCHINDUCTOR_CACHE_DIR", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        assert env.get(name) == START_ENV.get(name), name
    if forks_expected():
        assert conftest.fork_server("llmopt.run", env) is not None
        assert conftest.fork_server("llmopt.sweep", env) is None, "a sweep's parent imports no model library"
        assert conftest.fork_server("llmopt.run", {**env, "OMP_NUM_THREADS": "7"}) is None, "read while importing"


def test_a_forked_command_line_has_its_own_exit_code_streams_and_folder(tmp_path, monkeypatch: pytest.MonkeyPatch):
    if forks_expected():  # then this test must not pass through a plain subprocess
        monkeypatch.setattr(conftest.subprocess, "run", None)
    result = run_cli("llmopt.run", "--strategy", "lead", "--dataset", "sample", "--limit", "2", "--out", "here",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "here" / "summary.json").is_file()
    bad = run_cli("llmopt.run", "--strategy", "lead", "--limit", "0")
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1, bad
