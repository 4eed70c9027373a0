"""llmopt tune end to end: a search of served engines on the tiny model (the load test's search under the SLO, the
gate, the validation, the reproduction lines, the report), killed after its first timed trial and resumed without
repeating one; and the drift screen on the real model, where bitsandbytes NF4 drifts far and is dropped, with the
figure as the reason."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, read_json, read_jsonl, run_cli, suite_environment

# llama.cpp on the tiny model at two prompt batches (a server that starts in a second); transformers serve and vLLM
# are served end to end in test_loadtest_engines.py
SPACE = "engines:\n  llamacpp: {gguf_type: [q8_0], n_batch: [512, 64]}\n"
FLAGS = ("--slo", "ttft=60s,tpot=10s", "--max-new-tokens", "4", "--rung-requests", "4", "--confidence", "0",
         "--drift-docs", "1", "--drift-tokens", "4", "--gate-docs", "2", "--finalists", "1", "--search-max", "2",
         "--price-per-hour", "0.1", "--trial-timeout", "300")  # fmt: skip


def history(folder: Path) -> list[dict]:
    return read_jsonl(folder / "history.jsonl") if (folder / "history.jsonl").is_file() else []


@pytest.mark.skipif(sys.platform != "linux", reason="signals and process groups as on Linux")
def test_a_search_killed_after_a_trial_resumes_without_repeating_one(tmp_path: Path):
    pytest.importorskip("llama_cpp.server")
    space, out = tmp_path / "space.yaml", tmp_path / "tune"
    space.write_text(SPACE)
    args = ["--model", "tiny", "--space", str(space), "--out", str(out), *FLAGS]
    proc = subprocess.Popen([sys.executable, "-m", "llmopt.tune", *args], cwd=ROOT, env=cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 400
    while not any(t["stage"] == "speed" for t in history(out)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)  # Ctrl-C, as a terminal sends it
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr
    before = {(t["stage"], t["key"], t["rung"]): t["ended"] for t in history(out)}
    assert read_json(out / "tune.json")["status"] == "interrupted"
    assert sum(stage == "speed" for stage, _, _ in before) >= 1

    result = run_cli("llmopt.tune", *args, "--resume", timeout=600)
    assert result.returncode == 0, result.stderr
    trials = history(out)
    ids = [(t["stage"], t["key"], t["rung"]) for t in trials]
    assert len(ids) == len(set(ids)), "a trial ran twice"
    assert all(t["ended"] == before[i] for t, i in zip(trials, ids, strict=True) if i in before), "a finished trial ran again"
    assert {s for s, _, _ in ids} == {"estimate", "drift", "speed", "gate", "validate"}

    summary = read_json(out / "tune.json")
    assert summary["status"] == "done"
    winner = summary["winner"]
    assert winner is not None and winner["engine"] == "llamacpp"
    speed = winner["figures"]["speed"]
    assert speed["capacity"] >= 1 and winner["throughput"] > 0 and winner["cost"] > 0
    assert summary["validation"]["passed"], summary["validation"]
    assert summary["validation"]["figures"]["seed"] != 0
    lines = summary["reproduce"]
    assert lines["loadtest"].startswith(f"llmopt loadtest --serve {winner['engine']} --model tiny")
    confirmed = summary["validation"]["figures"]["concurrency"]  # the capacity, or a lower load the search passed
    assert confirmed <= speed["capacity"] and f"--concurrency {int(confirmed)}" in lines["loadtest"]
    assert " -m " in lines["server"] and "--port 8000" in lines["server"]
    # Every configuration has its estimate beside what it measured; the gate says which measure decided.
    for point in summary["points"]:
        assert point["figures"]["estimate"]["tpot_floor_ms"] > 0
    assert winner["quality_decided_by"].startswith(("gate", "drift"))
    assert "Winner" in result.stdout and "loadtest:" in result.stdout
    report = (out / "report.md").read_text()
    assert "Winner:" in report and "## Configurations" in report and lines["loadtest"] in report
    again = run_cli("llmopt.report", out)
    assert again.returncode == 0, again.stderr
    assert (out / "report.md").read_text() == report


def test_the_drift_screen_drops_a_mode_that_drifts_far(tmp_path: Path):
    """SmolLM2-135M: bitsandbytes NF4 re-quantizes weights that are already 4-bit and drifts far from the float32
    reference (KL about 0.3); default at this host's dtype stays close. A strict threshold drops NF4 with its figure."""
    pytest.importorskip("bitsandbytes")
    from llmopt.models import packaged

    try:
        packaged.gguf_file("smollm2-135m")
    except Exception as exc:
        pytest.skip(str(exc))
    from test_tune_logic import settings

    from llmopt.sweeps.sweep import run_drift_args
    from llmopt.tuning import screen
    from llmopt.tuning.history import History
    from llmopt.tuning.space import QualityMode

    s = settings(model="smollm2-135m", prompt="chat", drift_docs=1, drift_tokens=16, max_kl=0.05, min_top1=0.9)
    modes = [QualityMode("default", "smollm2-135m"), QualityMode("4bit", "smollm2-135m")]
    lines: list[str] = []
    with suite_environment():  # `llmopt drift` starts from os.environ: the suite's, offline
        found = screen.screen(modes, s, tmp_path, History(tmp_path), lambda a, f: run_drift_args(a, f, lines.append),
                              lambda t: None)  # fmt: skip
    kept, dropped = found["default"], found["4bit"]
    assert kept.passed and kept.figures["kl_mean"] < 0.05, kept
    assert not dropped.passed and dropped.bound == "drift"
    assert dropped.figures["kl_mean"] > 0.1 and f"KL mean {dropped.figures['kl_mean']:.4g} > 0.05" in dropped.detail
    assert json.loads((tmp_path / "history.jsonl").read_text().splitlines()[-1])["key"] == "4bit"
