"""Shared helpers: run the real command lines in a subprocess, offline, and read what they wrote."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import preloaded
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The environment the suite was started in. Command lines run in it, not in os.environ as it is later: libraries
# that tests import in-process write to os.environ (vLLM's in-process mode sets VLLM_ENABLE_V1_MULTIPROCESSING=0,
# torch's inductor its cache folder, llmopt the NVML check), and a command line must not see what an earlier test
# happened to import, as a user's shell would not.
START_ENV = dict(os.environ)


def cli_env() -> dict[str, str]:
    env = dict(START_ENV)
    # No machine here reaches a model hub: fail fast instead of waiting on the network.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


@contextlib.contextmanager
def suite_environment() -> Iterator[None]:
    """os.environ as cli_env() has it, for code that starts its processes from os.environ itself (VllmServer)."""
    with mock.patch.dict(os.environ, cli_env(), clear=True):
        yield


_fork_server: preloaded.Server | None = None


def run_cli(module: str, *args: str | Path, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run_module(module, *args, cwd=cwd, timeout=timeout)


def run_module(module: str, *args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`python -m module args` (in `env`, cli_env() unless given): forked from tests/preloaded.py's server where that
    cannot change what the test sees (a process of its own all the same, without importing torch again), else a
    plain subprocess. LLMOPT_TEST_FORKS=0 turns the server off."""
    env, argv = cli_env() if env is None else env, [str(a) for a in args]
    server = fork_server(module, env)
    if server is not None:
        return server.run(module, argv, cwd, env, timeout)
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)  # fmt: skip


def fork_server(module: str, env: dict[str, str]) -> preloaded.Server | None:
    """This worker's fork server, where it may run `python -m module` in `env`; None where a plain subprocess must."""
    global _fork_server
    # Not on a CUDA host: a child forked there must initialize CUDA itself, and the suite runs on one worker anyway.
    if module not in preloaded.MODULES or os.environ.get("LLMOPT_TEST_FORKS", "1") == "0" or _has_cuda():
        return None
    if _fork_server is None:
        _fork_server = preloaded.Server(cli_env())
    return _fork_server if _fork_server.usable(module, env) else None


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
    """vLLM on the whole sample with the tiny model at the dtype rule, its engine core in a process of its own as on
    CUDA (one engine start, shared: test_vllm.py reads its engine batching, skips and memory scope, test_gpu_logic.py
    its dtype)."""
    pytest.importorskip("vllm")
    out = tmp_path_factory.mktemp("vllm-tiny") / "vllm"
    result = run_module(
        "llmopt.run", "--strategy", "vllm", "--model", "tiny", "--dataset", "sample", "--max-new-tokens", "12",
        "--ignore-eos", "--enforce-eager", "--max-model-len", "170", "--batch-size", "4", "--out", out,
        env={**cli_env(), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"},
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


SERVER_KEY = "sk-llmopt-test-7f3a9c"  # the shared server's API key; no file a load test writes may hold it


@pytest.fixture(scope="session")
def keyed_vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One `vllm serve` of the tiny model for test_loadtest.py and test_loadtest_observe.py (one engine start, not
    two): an API key, and at most 4 sequences a batch, so that an open loop can outrun it (the saturation test) while
    the closed loops of up to 4 users there never queue."""
    pytest.importorskip("vllm")
    from llmopt.serving.server import VllmServer

    log = tmp_path_factory.mktemp("server") / "server.log"
    server = VllmServer("vllm", "tiny", log, api_key=SERVER_KEY, extra_args=["--enforce-eager", "--max-num-seqs", "4"])
    with suite_environment():
        server.start()
    yield server
    server.stop()


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


@functools.cache
def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# --- the suite on several workers: `make test` runs `pytest -n auto --dist loadfile` (pytest-xdist) -----------------

# A file's tests run on one worker, so that its module fixtures are built once. Files whose tests share a session
# fixture go together for the same reason (xdist's own loadgroup cannot: it rewrites a test id that pytest 9 no
# longer reads).
SHARED_FIXTURE_GROUPS = {
    "test_vllm.py": "vllm_tiny_run",  # vllm_tiny_run
    "test_gpu_logic.py": "vllm_tiny_run",  # vllm_tiny_run and default_tiny_auto_run
    "test_random_weights.py": "vllm_tiny_run",  # default_tiny_auto_run
    "test_loadtest.py": "keyed_vllm_server",
    "test_loadtest_observe.py": "keyed_vllm_server",
}
# The groups that take longest (seconds on one core of a 2-core AMD EPYC) go out first, so that no worker is left
# with a long one at the end while the others wait. `make test` passes --no-loadscope-reorder to keep this order.
SLOWEST_FIRST = (
    "test_tune.py",  # 210: a search killed and resumed, and the real model's drift screen
    "test_quality.py",  # 145
    "vllm_tiny_run",  # 95
    "keyed_vllm_server",  # 85
    "test_loadtest_engines.py",  # 80
    "test_loadtest_workloads.py",  # 75
    "test_modes.py",  # 70
    "test_ray.py",  # 65
    "test_sweep_report.py",  # 45
    "test_parallel.py",  # 45
    "test_real_model.py",  # 40
    "test_html_report.py",  # 30
)


def group_of(nodeid: str) -> str:
    file = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return SHARED_FIXTURE_GROUPS.get(file, file)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hooks: plain pytest (the GPU machine's) runs without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadfile, with the files of SHARED_FIXTURE_GROUPS sent to one worker together."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileGroupScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return FileGroupScheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core this process may use (at most four); one worker on a CUDA host, where tests read
    the device's memory through NVML and a second worker's engine would be counted in it."""
    if _has_cuda():
        return 1
    return max(1, min(4, len(os.sched_getaffinity(0))))


def pytest_configure(config: pytest.Config) -> None:
    """A worker of `-n N` keeps to its own share of the cores, and so does every process it starts (affinity is
    inherited; torch, OpenMP and vLLM's CPU worker size their threads from it). Two workers that each let torch spread
    over both cores of a 2-core machine collapse into spinning OpenMP threads (60x slower, measured), and each test's
    timings would depend on what the other worker runs."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    index = int(worker.removeprefix("gw"))
    share = cpus[index * len(cpus) // count : (index + 1) * len(cpus) // count] or cpus
    os.sched_setaffinity(0, share)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {group: i for i, group in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(group_of(item.nodeid), len(rank)))  # stable: the rest keep their order
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def host_line() -> str:
    """The CPU the suite ran on, in the terms its tests read (a suite's time means little without it)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []))
    if flags & {"avx512_bf16", "amx_bf16"}:
        isa = "AVX512-BF16"
    elif "avx512f" in flags:
        isa = "AVX512 without BF16"
    elif "avx2" in flags:
        isa = "AVX2"
    else:
        isa = "no AVX2"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"host: {model} ({platform.machine()}), {cpus} CPUs, {isa}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(host_line())
