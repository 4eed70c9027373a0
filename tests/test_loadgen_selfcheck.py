"""The load generator against tests/instant_server.py (a server that does no work, on a fixed schedule of chunks):
its timestamps against the schedule, its client-bound flag, the /metrics notes (HTML, missing, unreachable), and
`llmopt report` over two load tests."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, read_json, read_jsonl, run_cli, run_module

from llmopt.serving import scrape, selfcheck


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


def host_loop_lag_ms(seconds: float = 1.5) -> float:
    """The p99 overshoot of the generator's own 10 ms loop probe in a process of its own doing nothing else: how late
    any process on this host wakes now, whatever a load generator does (a busy shared machine: tens of ms)."""
    code = ("import asyncio; from llmopt.serving import selfcheck as s; w = s.ClientWatch(); "
            f"asyncio.run(w.run(asyncio.sleep({seconds}))); print(s.figures(w, [])['loop_lag_ms']['p99'])")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.fixture(scope="module")
def lag_threshold_ms() -> float:
    """The client-lag threshold both tests below run with: the default, or well above what this host's own scheduling
    costs any process now, so that a healthy client on a busy machine is not flagged for the machine's lag."""
    return max(selfcheck.LAG_THRESHOLD_MS, 4 * host_loop_lag_ms())


@contextlib.contextmanager
def held_off_the_cpu(pid: int, run_s: float, stopped_s: float) -> Iterator[None]:
    """The process runs `run_s`, then is held off the CPU for `stopped_s` (SIGSTOP, SIGCONT), over and over: what a
    core shared with a busier process, or a container's CPU quota, does to a load generator, here the same on any
    host whatever its speed or number of cores."""
    done = threading.Event()

    def cycle() -> None:
        with contextlib.suppress(ProcessLookupError):
            while not done.is_set():
                os.kill(pid, signal.SIGSTOP)
                done.wait(stopped_s)
                os.kill(pid, signal.SIGCONT)
                done.wait(run_s)

    thread = threading.Thread(target=cycle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


@pytest.mark.parametrize("load, level", [(("--concurrency", "8"), "c8"), (("--rate", "200"), "r200")])
def test_a_generator_starved_of_cpu_is_client_bound(lag_threshold_ms: float, tmp_path: Path, load, level: str):
    """A server on a fixed schedule (8 chunks, 5 ms apart) and a generator held off the CPU for 3 times the threshold
    in every 4.5 times it, from its level's start to its end: its timestamps are late by up to that hold, whatever
    the server did, so the level is flagged client-bound (a closed loop by its event-loop lag: each send follows the
    late reading of the previous answer at once; an open loop by its send lag too), warned of on stderr and marked †
    in the report."""
    proc, url = start_instant("--chunks", "8", "--first-ms", "5", "--gap-ms", "5")
    out = tmp_path / "lt"
    duration_s, hold_s = 3.0, 3 * lag_threshold_ms / 1000
    cmd = [sys.executable, "-m", "llmopt.loadtest", "--endpoint", url, "--out", str(out), "--no-plots", *load,
           "--duration", str(duration_s), "--client-lag-threshold", f"{lag_threshold_ms:.1f}"]  # fmt: skip
    gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT)
    try:
        wait_for(out / "levels" / "all" / level / "requests.jsonl", gen)
        with held_off_the_cpu(gen.pid, hold_s / 2, hold_s):
            time.sleep(duration_s + 1)  # the whole level, its drain included
        _, stderr = gen.communicate(timeout=300)
    finally:
        if gen.poll() is None:
            gen.kill()
        proc.terminate()
        proc.wait(timeout=10)
    assert gen.returncode == 0, stderr
    client = read_json(out / "summary.json")["levels"][0]["client"]
    assert client["client_bound"] and "lag p99" in client["client_bound"], (lag_threshold_ms, client)
    assert client["loop_lag_ms"]["p99"] > lag_threshold_ms
    if load[0] == "--rate":
        assert client["send_lag_ms"]["p99"] > lag_threshold_ms, "arrivals due while it was held left late"
    assert "client-bound" in stderr
    report = (out / "report.md").read_text()
    assert f"| all† | {load[1]} |" in report and "† client-bound" in report


def test_a_heavily_loaded_server_with_an_idle_generator_is_not_client_bound(lag_threshold_ms: float, tmp_path: Path):
    """32 users against a server that streams 4 answers at once (8 chunks, 10 ms apart) and queues the rest: every
    request waits for a slot far longer than its answer takes, and the generator only waits on its sockets. Its
    send lag, loop lag and CPU stay within the limits, so the level is not flagged."""
    proc, url = start_instant("--chunks", "8", "--first-ms", "10", "--gap-ms", "10", "--max-running", "4")
    out = tmp_path / "lt"
    try:
        result = loadtest(out, url, "--concurrency", "32", "--duration", "3", "--metrics-interval", "0.25",
                          "--client-lag-threshold", f"{lag_threshold_ms:.1f}")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    level = read_json(out / "summary.json")["levels"][0]
    scrapes = read_jsonl(out / "levels" / "all" / "c32" / "server_metrics.jsonl")
    queued = [s["instant:requests_waiting"] for s in scrapes[1:-1]]
    assert queued and statistics.median(queued) >= 16, "most users' requests waited in the server's queue"
    assert level["ttft_s"]["p50"] > 5 * 0.080, "a request's wait for a slot is several answers long"
    assert level["client"]["client_bound"] is None, (lag_threshold_ms, level["client"])
    assert "client-bound" not in result.stderr


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
