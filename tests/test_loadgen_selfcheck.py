"""The load generator against tests/instant_server.py (a server that does no work, on a fixed schedule of chunks):
its timestamps against the schedule, its client-bound flag, the /metrics notes (HTML, missing, unreachable), and
`llmopt report` over two load tests."""

from __future__ import annotations

import itertools
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, read_json, read_jsonl, run_cli, run_module

from llmopt.serving import scrape


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_instant(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "instant_server.py"), "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("instant server did not start")


@pytest.fixture(scope="module")
def scheduled():
    """First chunk 10 ms after arrival, then one every 5 ms; Prometheus text at /metrics."""
    proc, url = start_instant("--chunks", "8", "--first-ms", "10", "--gap-ms", "5")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def loadtest(out: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return run_module("llmopt.loadtest", "--endpoint", url, "--out", out, "--no-plots", *args, timeout=300)


def test_timestamps_follow_the_servers_schedule(tmp_path: Path):
    """First chunk 10 ms after arrival, then one every 5 ms; the server logs when it really sent each chunk (a busy
    machine makes it late, and then chunks arrive together): the client's gaps follow what the server did."""
    log = tmp_path / "sent.jsonl"
    proc, url = start_instant("--chunks", "8", "--first-ms", "10", "--gap-ms", "5", "--log", str(log))
    try:
        out = tmp_path / "lt"
        result = loadtest(out, url, "--concurrency", "4", "--requests", "40", "--metrics-interval", "0.2")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    lv = read_json(out / "summary.json")["levels"][0]
    records = [r for r in read_jsonl(out / "levels" / "all" / "c4" / "requests.jsonl") if not r["warmup"]]
    gaps = [g for r in records for g in r["itl_ms"]]
    assert len(gaps) == 40 * 7
    sent = [1000 * (b - a) for row in read_jsonl(log) for a, b in itertools.pairwise(row["actual"])]
    assert statistics.median(gaps) == pytest.approx(statistics.median(sent), abs=1.0)
    # The server never sends a first chunk before its 10 ms: no TTFT can be shorter.
    assert min(1000 * r["ttft_s"] for r in records) >= 10.0
    # Counters the tool does not know by name are still kept, summed over labels, in each scrape.
    scrapes = read_jsonl(out / "levels" / "all" / "c4" / "server_metrics.jsonl")
    assert scrapes[-1]["instant:requests"] - scrapes[0]["instant:requests"] == 44, "40 measured and 4 warm-up requests"
    assert lv["server_metrics"]["source"] == "other" and lv["server_metrics"]["gauges"] == {}


def test_a_client_over_its_lag_threshold_is_flagged(scheduled, tmp_path: Path):
    out = tmp_path / "lt"
    result = loadtest(out, scheduled, "--concurrency", "2", "--requests", "10", "--client-lag-threshold", "0.0001")
    assert result.returncode == 0, result.stderr
    lv = read_json(out / "summary.json")["levels"][0]
    assert "send lag p99" in lv["client"]["client_bound"]
    assert "client-bound" in result.stderr
    report = (out / "report.md").read_text()
    assert "| all† | 2 |" in report and "† client-bound" in report


@pytest.mark.parametrize("mode, says", [("html", "HTML page"), ("none", "HTTP 404")])
def test_a_metrics_page_that_is_not_prometheus_is_a_note(tmp_path: Path, mode: str, says: str):
    proc, url = start_instant("--chunks", "4", "--metrics", mode)
    try:
        out = tmp_path / "lt"
        result = loadtest(out, url, "--concurrency", "1,2", "--requests", "4")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    (note,) = summary["observing"]["metrics_notes"]
    assert says in note and "no server metrics" in note
    assert [lv["completed"] for lv in summary["levels"]] == [4, 4]
    assert all(lv["server_metrics"]["scrapes"] == 0 for lv in summary["levels"])
    assert says in (out / "report.md").read_text()


def test_an_unreachable_metrics_endpoint_is_a_note():
    scraper = scrape.Scraper(f"http://127.0.0.1:{free_port()}", interval_s=0.05, timeout_s=0.5)
    series = scrape.Series()
    with open("/dev/null", "w") as sink:
        scraper.start(series, sink)
        time.sleep(0.2)
        scraper.stop()
    assert series.times == [] and len(scraper.notes) == 1 and "unreachable" in scraper.notes[0]
    assert scrape.summarize(series, scraper.notes) == {"scrapes": 0, "notes": scraper.notes, "gauges": {}, "counters": {}}


def test_report_compares_two_load_tests(scheduled, tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out, levels in ((a, "1,4"), (b, "4,8")):
        result = loadtest(out, scheduled, "--concurrency", levels, "--requests", "8", "--no-server-metrics")
        assert result.returncode == 0, result.stderr
    done = run_cli("llmopt.report", a, b, "--out", tmp_path / "cmp")
    assert done.returncode == 0, done.stderr
    rows = {(r["test"], r["concurrency"]): r for r in _csv(tmp_path / "cmp" / "loadtest_comparison.csv")}
    assert float(rows[("a", "4")]["requests_per_s_ratio"]) == pytest.approx(1.0)
    la = {lv["concurrency"]: lv for lv in read_json(a / "summary.json")["levels"]}
    lb = {lv["concurrency"]: lv for lv in read_json(b / "summary.json")["levels"]}
    assert float(rows[("b", "4")]["requests_per_s_ratio"]) == pytest.approx(lb[4]["requests_per_s"] / la[4]["requests_per_s"])
    assert float(rows[("b", "4")]["e2e_s_p95_ratio"]) == pytest.approx(lb[4]["e2e_s"]["p95"] / la[4]["e2e_s"]["p95"])
    assert rows[("b", "8")]["requests_per_s_ratio"] == "", "a level the baseline did not run has no ratio"
    assert "Load tests compared" in (tmp_path / "cmp" / "loadtest_comparison.md").read_text()


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bad_observing_flags_are_one_line_and_exit_2(tmp_path: Path):
    from conftest import assert_usage_error

    base = ("llmopt.loadtest", "--endpoint", "http://127.0.0.1:9", "--served-model", "x", "--concurrency", "1")
    assert_usage_error(run_cli(*base, "--metrics-interval", "0", "--out", tmp_path / "a"), "--metrics-interval")
    assert_usage_error(run_cli(*base, "--client-lag-threshold", "-1", "--out", tmp_path / "b"), "--client-lag-threshold")
    assert_usage_error(
        run_cli(
            *base, "--synthetic-tokens", "8", "--tokenizer", "tiny", "--quality-reference", tmp_path, "--out", tmp_path / "c"
        ),
        "--quality-reference",
    )
    assert_usage_error(run_cli(*base, "--quality-reference", tmp_path, "--out", tmp_path / "d"), "no records.jsonl")
