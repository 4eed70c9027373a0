"""Hub ids: downloaded before loading and timed apart, and a Hub that cannot be reached fails in seconds, in one
line that says how to use local files instead. Against a Hub served on 127.0.0.1 (tests/hub_server.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, assert_usage_error, cli_env, read_json
from hub_server import Hub

WEIGHTS_DELAY_S = 6.0


def online_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = cli_env()
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(key, None)
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1", LLMOPT_CACHE=str(tmp_path / "c"))
    return env


def run(env: dict[str, str], *args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "llmopt.run", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_download_is_timed_apart_from_load(tmp_path: Path, tiny_model: Path):
    args = ["--strategy", "default", "--model", "org/tiny", "--dataset", "sample", "--limit", "2", "--max-new-tokens", "4"]
    with Hub({"org/tiny": tiny_model}, delay_s=WEIGHTS_DELAY_S) as hub:
        env = online_env(tmp_path, hub.url)
        first = run(env, *args, "--out", tmp_path / "first")
        assert first.returncode == 0, first.stderr
        assert any(r.startswith("GET /org/tiny/resolve/") and r.endswith("model.safetensors") for r in hub.requests)
        second = run(env, *args, "--out", tmp_path / "second")  # now from the local cache
        assert second.returncode == 0, second.stderr
    downloaded, cached = (read_json(tmp_path / name / "summary.json") for name in ("first", "second"))
    # The weights took WEIGHTS_DELAY_S to arrive: that time is download_s, and load_s is the same as from the cache.
    assert downloaded["download_s"] >= WEIGHTS_DELAY_S
    assert cached["download_s"] < WEIGHTS_DELAY_S
    assert downloaded["load_s"] < cached["load_s"] + WEIGHTS_DELAY_S / 2
    assert "download" in first.stdout
    snapshot = next((tmp_path / "hf" / "hub").glob("models--org--tiny/snapshots/*"))
    assert (snapshot / "model.safetensors").is_file() and (snapshot / "tokenizer.json").is_file()


@pytest.fixture(scope="module")
def random_weights_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):
    """One --weights random run of a Hub id (shared by the two tests below): its result, what it asked the Hub for,
    and the environment whose cache it filled."""
    tmp_path = tmp_path_factory.mktemp("hub-random")
    with Hub({"org/tiny": tiny_model}) as hub:
        env = online_env(tmp_path, hub.url)
        result = run(env, "--strategy", "default", "--model", "org/tiny", "--weights", "random", "--workload", "fixed:16",
                     "--limit", "1", "--max-new-tokens", "2", "--out", tmp_path / "r")  # fmt: skip
        requests = list(hub.requests)
    return result, requests, env


def test_random_weights_download_no_weights(random_weights_run):
    result, requests, _ = random_weights_run
    assert result.returncode == 0, result.stderr
    assert not any(r.endswith(".safetensors") for r in requests), "only the config and tokenizer are needed"


def test_unreachable_hub_fails_in_seconds_with_a_way_out(tmp_path: Path):
    """Port 9 on the loopback is closed: huggingface_hub would retry for about 30 s and print a line per retry."""
    env = online_env(tmp_path, "http://127.0.0.1:9")
    started = time.monotonic()
    result = run(env, "--strategy", "default", "--model", "org/tiny", "--dataset", "sample", "--out", tmp_path / "x")
    elapsed = time.monotonic() - started
    assert_usage_error(result, "'org/tiny' is not in the local Hugging Face cache", "cannot be reached", "--model /path/to")
    assert elapsed < 20, f"took {elapsed:.0f} s"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        ("org/no-such-model", ("does not exist on the Hub", "--model /path/to")),
        ("gated/llama", ("gated, private or misspelt", "HF_TOKEN")),
    ],
)
def test_missing_and_gated_models_say_what_to_do(tmp_path: Path, tiny_model: Path, model: str, fragments: tuple[str, ...]):
    with Hub({"org/tiny": tiny_model, "gated/llama": tiny_model}) as hub:
        result = run(online_env(tmp_path, hub.url), "--strategy", "default", "--model", model, "--dataset", "sample")
    assert_usage_error(result, repr(model), *fragments)


def test_wikilingua_without_cache_or_hub_names_the_local_alternatives(tmp_path: Path):
    env = online_env(tmp_path, "http://127.0.0.1:9")
    result = run(env, "--strategy", "lead", "--dataset", "wikilingua", "--out", tmp_path / "x")
    assert_usage_error(result, "cannot be reached", "--dataset sample", "--dataset PATH.jsonl")


def test_a_cached_config_without_weights_is_not_a_model(tmp_path: Path, random_weights_run):
    """A --weights random run caches the config and tokenizer only; offline, a pretrained run must say so."""
    result, _, env = random_weights_run
    assert result.returncode == 0, result.stderr
    env = {**env, "HF_HUB_OFFLINE": "1"}
    offline = run(env, "--strategy", "default", "--model", "org/tiny", "--dataset", "sample", "--out", tmp_path / "p")
    assert_usage_error(offline, "without its weights", "--model /path/to")


def test_serving_a_4bit_mode_checks_the_checkpoint_first():
    from llmopt.errors import UsageError
    from llmopt.serving.server import VllmServer

    pytest.importorskip("vllm")
    with pytest.raises(UsageError, match="needs a AWQ checkpoint; 'tiny' is not quantized"):
        VllmServer("vllm-awq", "tiny", Path("/dev/null")).start()
