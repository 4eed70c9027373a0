"""The command lines that reproduce a configuration by hand: `llmopt run ...` offline; online, the load test that
starts the server itself, and the server on its own with the load test pointed at it."""

from __future__ import annotations

import shlex
from typing import Any

from llmopt.tuning.settings import Settings
from llmopt.tuning.space import PUBLISHED, Config
from llmopt.tuning.trials import REQUESTS_PER_USER, serve_args, serve_options, served_prompt


def _line(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def run_line(config: Config, settings: Settings) -> str:
    words = ["llmopt", "run", "--strategy", config.engine, "--model", config.model, "--dataset", settings.dataset,
             "--prompt", settings.prompt, "--max-new-tokens", str(settings.max_new_tokens)]  # fmt: skip
    for key, value in config.settings:
        if key == "gguf_type" and value == PUBLISHED:
            continue
        words += [f"--{key.replace('_', '-')}", str(value)]
    return _line(words)


def load_words(settings: Settings, concurrency: int | None, requests: int, seed: int | None) -> list[str]:
    words = ["--dataset", settings.dataset, "--prompt", served_prompt(settings), "--max-new-tokens", str(settings.max_new_tokens),
             "--api", settings.api, "--slo", str(settings.slo), "--requests", str(requests)]  # fmt: skip
    words += ["--concurrency", str(concurrency)] if concurrency else ["--search", "concurrency"]
    if not concurrency and settings.confidence:  # a search, as the last rung ran it; one level, as the validation
        words += ["--confidence", f"{settings.confidence:g}"]
    words += ["--requests-per-user", str(REQUESTS_PER_USER)]
    if seed is not None:
        words += ["--seed", str(seed)]
    if settings.price_per_hour is not None:
        words += ["--price-per-hour", f"{settings.price_per_hour:g}"]
    return words


def serve_words(config: Config) -> list[str]:
    words = ["--serve", config.engine, "--model", config.model]
    for key, value in serve_options(config).items():
        words += [f"--{key.replace('_', '-')}", str(value)]
    return words + [f"--serve-arg={arg}" for arg in serve_args(config)]


def online_lines(config: Config, settings: Settings, concurrency: int | None, requests: int,
                 seed: int | None, server_line: str | None) -> dict[str, Any]:  # fmt: skip
    """The one command (server and load together), and the two of them apart where the server's own line is known."""
    lines = {"loadtest": _line(["llmopt", "loadtest", *serve_words(config), *load_words(settings, concurrency, requests, seed)])}
    if server_line:
        lines["server"] = server_line
        lines["loadtest_endpoint"] = _line(["llmopt", "loadtest", "--endpoint", "http://127.0.0.1:8000",
                                            "--tokenizer", config.model,
                                            *load_words(settings, concurrency, requests, seed)])  # fmt: skip
    return lines
