"""What `llmopt loadtest` watches beside its requests, against a real `vllm serve` of the tiny model on 127.0.0.1:
the server's /metrics, the over-saturation stop, quality under load; and the comparison of two load tests.

The server is conftest's keyed_vllm_server, shared with test_loadtest.py: at most 4 sequences per batch, so that an
open loop can outrun it (the saturation test) while a closed loop of 4 users never queues.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import SERVER_KEY, cli_env, read_json, read_jsonl, run_cli, run_module

from llmopt.serving import saturation, scrape

KEY = SERVER_KEY  # must never appear in any file the tool writes


@pytest.fixture
def server(keyed_vllm_server):
    return keyed_vllm_server


def loadtest(out: Path, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = cli_env()
    cmd = [*args, "--out", str(out), "--tokenizer", "tiny"]
    if key is not None:
        env["LLMOPT_TEST_KEY"] = key
        cmd += ["--api-key-env", "LLMOPT_TEST_KEY"]
    return run_module("llmopt.loadtest", *cmd, env=env)


def level_folder(out: Path, level: dict) -> Path:
    return out / "levels" / level["bin"] / (f"c{level['concurrency']}" if level["concurrency"] else f"r{level['rate']:g}")


def test_server_metrics_client_check_and_quality(server, tmp_path: Path):
    out = tmp_path / "lt"
    result = loadtest(
        out, "--endpoint", server.url, "--concurrency", "1,4", "--requests", "12", "--max-tokens", "8", "--ignore-eos",
        "--bins", "1-1000", "--metrics-interval", "0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["observing"]["metrics_notes"] == [], "vLLM's /metrics is Prometheus text and reachable"
    for lv in summary["levels"]:
        records = read_jsonl(level_folder(out, lv) / "requests.jsonl")
        scrapes = read_jsonl(level_folder(out, lv) / "server_metrics.jsonl")
        sm = lv["server_metrics"]
        assert sm["source"] == "vllm" and sm["scrapes"] == len(scrapes) >= 2, "one at the start, one after the last answer"
        assert set(sm["gauges"]) == {"running_requests", "waiting_requests", "kv_cache_usage"}
        running = [scrape.pick(s, scrape.GAUGES["running_requests"]) for s in scrapes]
        assert sm["gauges"]["running_requests"]["max"] == max(running) <= lv["concurrency"]
        assert sm["gauges"]["running_requests"]["mean"] == pytest.approx(sum(running) / len(running))
        assert 0 <= sm["gauges"]["kv_cache_usage"]["max"] <= 1
        # Counters are end minus start of the level, warm-up requests included: every one of them was served then.
        assert sm["counters"]["finished_requests"] == len(records)
        assert sm["counters"]["generation_tokens"] == sum(r["output_tokens"] for r in records) == 8 * len(records)
        assert sm["counters"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in records)
        assert sm["counters"]["preemptions"] == 0
        assert lv["saturated"] is None, "4 users on 4 sequences never queue"
        # The client's self-check: a send lag per measured request (whether it flags a level is
        # test_loadgen_selfcheck's: a starved generator and an idle one).
        client = lv["client"]
        lags = sorted(1000 * r["late_s"] for r in records if not r["warmup"])
        assert client["send_lag_ms"]["max"] == pytest.approx(lags[-1])
        assert client["loop_lag_ms"]["p50"] is not None and 0 < client["client_cpu_cores"] < 2.5
        # Quality: every measured answer scored against the sample's summary, by the same scorer as `llmopt run`.
        from llmopt.documents.datasets import load_dataset
        from llmopt.quality.rouge import score_pairs

        refs = {d.id: d.summary for d in load_dataset("sample")}
        measured = [r for r in records if not r["warmup"]]
        scores = score_pairs([r["text"] for r in measured], [refs[r["payload"]] for r in measured])
        assert lv["quality"]["answers"] == 12
        for k in ("rouge1", "rouge2", "rougeL"):
            assert lv["quality"][k]["mean"] == pytest.approx(sum(s[k] for s in scores) / 12)
    # Greedy answers of the same payload at concurrency 1 and 4 (the 22 prompts of the sample run out in the second
    # level, which sends some of them again): the differing ones are those with two texts.
    texts: dict[str, set[str]] = {}
    for lv in summary["levels"]:
        for r in read_jsonl(level_folder(out, lv) / "requests.jsonl"):
            if not r["warmup"]:
                texts.setdefault(r["payload"], set()).add(" ".join(r["text"].split()))
    consistency = summary["quality"]["consistency"]
    assert consistency["payloads"] == len(texts) and consistency["per_level"][1]["compared"] > 0
    assert consistency["differing"] == sorted(p for p, t in texts.items() if len(t) > 1)
    report = (out / "report.md").read_text()
    assert "## Server metrics" in report and "## Quality under load" in report and "self-check" in report
    assert (out / "plots" / "server_metrics.png").stat().st_size > 0
    csv_head = (out / "summary.csv").read_text().splitlines()[0]
    assert "server_running_requests_max" in csv_head and "send_lag_ms_p99" in csv_head and "rouge1_mean" in csv_head


def test_quality_against_an_offline_run(server, tmp_path: Path):
    """An offline `llmopt run` of the same model (transformers, greedy, the same prompt and token budget) as the
    reference: agreement word for word and the paired ROUGE delta, recomputed here from both folders."""
    run = tmp_path / "offline"
    done = run_cli("llmopt.run", "--strategy", "default", "--model", "tiny", "--dataset", "sample", "--limit", "8",
                   "--max-new-tokens", "8", "--out", run)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = tmp_path / "lt"
    result = loadtest(
        out, "--endpoint", server.url, "--concurrency", "2", "--requests", "6", "--max-tokens", "8", "--bins", "1-1000",
        "--quality-reference", str(run), "--no-server-metrics",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    lv = summary["levels"][0]
    offline = {r["id"]: r for r in read_jsonl(run / "records.jsonl") if r["status"] == "ok"}
    measured = [r for r in read_jsonl(level_folder(out, lv) / "requests.jsonl") if not r["warmup"]]
    paired = [r for r in measured if r["payload"] in offline]
    vs = lv["quality"]["vs_reference"]
    assert vs["answers"] == len(paired) > 0
    same = sum(" ".join(r["text"].split()) == " ".join(offline[r["payload"]]["prediction"].split()) for r in paired)
    assert vs["agreement"] == pytest.approx(same / len(paired))
    from llmopt.quality.rouge import score_pair

    deltas = [score_pair(r["text"], offline_ref)["rouge1"] - offline[r["payload"]]["rouge1"]
              for r in paired if (offline_ref := _summary_of(r["payload"])) is not None]  # fmt: skip
    assert vs["rouge1_delta"]["delta"] == pytest.approx(sum(deltas) / len(deltas))
    assert vs["rouge1_delta"]["low"] <= vs["rouge1_delta"]["delta"] <= vs["rouge1_delta"]["high"]
    assert summary["quality"]["reference_notes"] == [], "same dataset, prompt and token budget"
    assert lv["server_metrics"]["notes"] == ["server metrics not scraped (--no-server-metrics)"]
    assert "agreement with offline" in (out / "report.md").read_text()


def _summary_of(doc_id: str) -> str | None:
    from llmopt.documents.datasets import load_dataset

    return next((d.summary for d in load_dataset("sample") if d.id == doc_id), None)


def test_an_over_saturated_level_is_stopped(server, tmp_path: Path):
    """An open loop well above what 4 sequences of 128 tokens at a time can serve (8-9 a second on a 2-core EPYC): the
    queue only grows, the level stops long before its 60 s, and the heavier level is not run. Five times the server's
    rate, not twenty: a rate the client itself cannot keep up with (150 a second, tried) drowns its event loop, and the
    server's queue then rises in bursts that hide the growth for most of the minute. 32 in flight at most, so that the
    level drains in seconds once stopped."""
    out = tmp_path / "lt"
    result = loadtest(
        out, "--endpoint", server.url, "--rate", "40,80", "--duration", "60", "--max-tokens", "128", "--ignore-eos",
        "--synthetic-tokens", "16", "--max-inflight", "32", "--warmup-requests", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    (lv,) = summary["levels"]
    assert lv["saturated"] and "over-saturated" in lv["saturated"]
    # Unstopped, this level runs its 60 s and then drains what is in flight; stopped, it ends before its 60 s.
    assert lv["window_s"] < 60, "stopped once the queue was seen to grow, not at the end of its 60 s"
    assert [s["rate"] for s in summary["stopped_early"]] == [80]
    assert "over-saturated" in summary["stopped_early"][0]["reason"]
    assert "stopped early: over-saturated" in result.stderr
    assert "stopped: over-saturated" in (out / "report.md").read_text()


def test_growth_rule_by_hand():
    rule = saturation.Rule(window_s=8, settle_s=2, min_points=6)
    rising = [(t / 2, float(t)) for t in range(0, 30)]  # +2 per second, never dipping
    assert saturation.growing(rising, rule, 0.5, 4) == pytest.approx(2.0)
    steady = [(t / 2, 10.0 + (t % 3)) for t in range(0, 30)]  # a full but steady queue
    assert saturation.growing(steady, rule, 0.5, 4) is None
    drained = rising[:20] + [(10.0, 0.0)] + [(10 + t / 2, float(t)) for t in range(1, 8)]
    assert saturation.growing(drained, rule, 0.5, 4) is None, "the queue drained inside the window"
    assert saturation.growing(rising[:8], rule, 0.5, 4) is None, "too short a series to judge"


def test_parse_keeps_counters_and_gauges_and_refuses_html():
    text = (
        "# HELP vllm:num_requests_running r\n# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0"} 3.0\nvllm:num_requests_running{engine="1"} 2.0\n'
        "# HELP vllm:kv_cache_usage_perc k\n# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0"} 0.5\nvllm:kv_cache_usage_perc{engine="1"} 0.25\n'
        "# HELP vllm:num_preemptions_total p\n# TYPE vllm:num_preemptions_total counter\n"
        'vllm:num_preemptions_total{engine="0"} 7.0\nvllm:num_preemptions_created{engine="0"} 1.7e9\n'
        "# HELP vllm:e2e_request_latency_seconds h\n# TYPE vllm:e2e_request_latency_seconds histogram\n"
        'vllm:e2e_request_latency_seconds_bucket{le="+Inf"} 4.0\nvllm:e2e_request_latency_seconds_count 4.0\n'
    )
    values = scrape.parse(text)
    assert values == {"vllm:num_requests_running": 5.0, "vllm:kv_cache_usage_perc": 0.375, "vllm:num_preemptions": 7.0,
                      "vllm:e2e_request_latency_seconds_count": 4.0}  # fmt: skip
    with pytest.raises(scrape.NotPrometheus):
        scrape.parse("<!doctype html><html><body>hi</body></html>")
    with pytest.raises(scrape.NotPrometheus):
        scrape.parse("this is { not prometheus\n")
