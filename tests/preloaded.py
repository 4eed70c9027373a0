"""A fork server for the suite's `python -m llmopt.run` command lines: torch, transformers and rouge-score imported
once, a fresh child forked for each command.

Those imports take 4-5 s of CPU on a 2-core EPYC, more than the tiny model's whole run, and the suite starts over a
hundred such runs. Each command still runs in a process of its own, from `python -m`'s entry
point, with the test's working folder, environment, stdout and stderr; only the imports are shared. The server is
used only when it cannot change what a test sees (`usable`): the imports printed nothing (so no notice a real process
would show is hidden), and no variable those libraries read while importing differs from the test's environment.
Anything else runs as a plain subprocess.

Protocol (one JSON object a line): the test writes {"module", "args", "cwd", "env", "stdout", "stderr"}; the server
answers {"pid"} once forked, then {"status"} (a wait status) when the child has ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Variables that torch, OpenMP, huggingface_hub or transformers read while importing: a command whose environment
# differs from the server's in one of them runs as a plain subprocess.
IMPORT_TIME_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_",
                        "CUDA_", "LD_", "PYTHON", "TOKENIZERS_", "USE_", "XDG_", "HOME")  # fmt: skip
# The commands that import torch (the load tester through transformers' tokenizer). Not drift's or a sweep's parent,
# which import no model library (test_drift_process.py) and start their work as fresh processes anyway.
MODULES = ("llmopt.run", "llmopt.loadtest", "llmopt.batchbench")


def import_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES)}


def serve() -> None:
    """The server's side: import, say whether that printed anything, then fork a child per request."""
    # As llmopt does before importing torch (llmopt/measure/cuda.py): a CUDA check through NVML, which leaves the
    # driver alone, so that no import here could leave a forked child unable to use CUDA.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    saved = os.dup(2)
    with tempfile.TemporaryFile() as printed:
        os.dup2(printed.fileno(), 2)
        import torch  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

        with contextlib.suppress(ImportError):  # ROUGE's (it brings nltk, a second of imports)
            from rouge_score import rouge_scorer  # noqa: F401

        sys.stderr.flush()
        os.dup2(saved, 2)
        printed.seek(0)
        noise = printed.read().decode(errors="replace")
    # Python threads would not survive the fork. Native pools are another matter: numpy's OpenBLAS starts its
    # threads on import and takes care of fork itself (pthread_atfork); OpenMP starts none until torch computes,
    # which the server never does.
    threads = threading.active_count()
    ready = {"ready": not noise and threads == 1, "why": noise[:500] or f"{threads} Python threads"}
    print(json.dumps(ready), flush=True)
    if not ready["ready"]:
        return
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}), flush=True)


def _child(request: dict) -> None:
    import atexit
    import runpy

    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        sys.argv = [request["module"], *request["args"]]
        sys.path[0] = os.getcwd()  # as `python -m` has it (the server's own is tests/)
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            if exit_.code is None:
                code = 0
            elif isinstance(exit_.code, int):
                code = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        # What the interpreter does on its way out: wait for non-daemon threads, run atexit, flush.
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


Completed = subprocess.CompletedProcess[str]


class Server:
    """The test's side: one server per pytest process, started at its first command."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=Path(__file__).parent.parent)  # fmt: skip
        self.pending = b""  # what the server wrote past the last line read
        ready = json.loads(self._read(600))
        self.ready, self.why = ready["ready"], ready["why"]

    def usable(self, module: str, env: dict[str, str]) -> bool:
        return self.ready and self.process.poll() is None and module in MODULES and import_env(env) == import_env(self.env)

    def _read(self, timeout: float) -> str:
        """The server's next line, read from its pipe unbuffered (a buffered reader would hide a line from select)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the fork server ended (exit code {self.process.wait()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def run(
        self, module: str, args: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        assert self.process.stdin is not None
        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"module": module, "args": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            pid = json.loads(self._read(60))["pid"]
            started = time.monotonic()
            try:
                status = json.loads(self._read(timeout))["status"]
            except TimeoutError:
                os.kill(pid, 9)
                self._read(60)
                raise subprocess.TimeoutExpired([module, *args], time.monotonic() - started) from None
            return subprocess.CompletedProcess([sys.executable, "-m", module, *args], os.waitstatus_to_exitcode(status),
                                               out.read_text(errors="replace"), err.read_text(errors="replace"))  # fmt: skip

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


if __name__ == "__main__":
    serve()
