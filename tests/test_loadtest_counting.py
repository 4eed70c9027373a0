"""What the load test counts and times, against tests/instant_server.py (a server that does no work, on a fixed
schedule of chunks that it logs): the client's clocks on a reasoning stream, what a level counts when its arrivals
could not all be sent, its steady-state window, Ctrl-C, the health watch, and the figures a serving engineer expects.
The client is the thing under test; the server is a peer whose timing is known."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from conftest import read_json, read_jsonl, run_module
from test_loadgen_selfcheck import start_instant

from llmopt.serving import stats
from llmopt.serving.client import RequestResult


def loadtest(out: Path, url: str, *args: str, timeout: float = 300):
    return run_module("llmopt.loadtest", "--endpoint", url, "--out", out, "--no-plots", *args, timeout=timeout)


def stop(proc) -> None:
    proc.terminate()
    proc.wait(timeout=10)


def measured(records: list[dict]) -> list[dict]:
    return [r for r in records if not r["warmup"] and not r["cut_off"]]


def test_reasoning_chunks_are_tokens_and_the_end_is_the_last_chunk(tmp_path: Path):
    """A reasoning stream: 10 chunks 20 ms apart, the first 6 reasoning, then the usage chunk 300 ms after the last
    token. TTFT is the first chunk of any kind (as vLLM stamps it), time to first output token the first answer
    chunk (as AIPerf's), e2e ends at the last chunk with choices (not at [DONE]), so TPOT is the chunks' own gap."""
    log = tmp_path / "sent.jsonl"
    proc, url = start_instant("--chunks", "10", "--reasoning", "6", "--first-ms", "20", "--gap-ms", "20",
                              "--tail-ms", "300", "--log", str(log))  # fmt: skip
    try:
        out = tmp_path / "lt"
        result = loadtest(out, url, "--api", "chat", "--concurrency", "2", "--requests", "8", "--no-server-metrics")
    finally:
        stop(proc)
    assert result.returncode == 0, result.stderr
    records = measured(read_jsonl(out / "levels" / "all" / "c2" / "requests.jsonl"))
    sent = read_jsonl(log)
    # What the server did, by its own clock: first chunk, first answer chunk, last chunk, after arrival (ms).
    first = statistics.median(1000 * (row["actual"][0] - row["arrived"]) for row in sent)
    first_answer = statistics.median(1000 * (row["actual"][6] - row["arrived"]) for row in sent)
    last = statistics.median(1000 * (row["actual"][-1] - row["arrived"]) for row in sent)
    ttft = statistics.median(1000 * r["ttft_s"] for r in records)
    e2e = statistics.median(1000 * r["e2e_s"] for r in records)
    assert ttft == pytest.approx(first, abs=10), "TTFT: the first chunk, reasoning included"
    assert e2e == pytest.approx(last, abs=10), "e2e ends at the last chunk with choices, not 300 ms later at [DONE]"
    ttfo = statistics.median(1000 * r["ttfo_s"] for r in records)
    assert ttfo == pytest.approx(first_answer, abs=10), "time to first output token: the first answer chunk"
    assert all(r["output_tokens"] == 10 and len(r["itl_ms"]) == 9 for r in records), "every chunk is a token"
    gap = statistics.median(1000 * (b - a) for row in sent for a, b in zip(row["actual"], row["actual"][1:], strict=False))
    assert statistics.median(r["tpot_ms"] for r in records) == pytest.approx(gap, abs=3)
    assert all(r["text"] == " tok" * 4 for r in records), "the answer's text is its content, not its reasoning"
    level = read_json(out / "summary.json")["levels"][0]
    assert level["ttft_s"]["p50"] == pytest.approx(ttft / 1000) and level["ttfo_s"]["p50"] == pytest.approx(ttfo / 1000)


def good_result(i: int, e2e: float = 0.3) -> RequestResult:
    return RequestResult(f"p{i}", 0.1 * i, e2e, 0.05, [0.025] * 10, 100, 11)


def test_an_over_saturated_level_fails_and_is_never_recommended():
    """A level halted as over-saturated is judged on the requests sent before the halt, which met every objective:
    it fails all the same (a search must not double past it), and a fixed sweep does not recommend it."""
    slo = stats.parse_slo("ttft=500ms,e2e=2s")
    figures = stats.level_stats([good_result(i) for i in range(20)], 2.0, None, slo)
    calm = {"bin": "all", "concurrency": 4, "rate": None, **figures}
    halted = {"bin": "all", "concurrency": 8, "rate": None, **figures}
    halted["saturated"] = "over-saturated at 9 s: the server's waiting requests rose without a dip for 8 s"
    assert stats.verdict(calm, slo, 0.0, None) == []
    (reason,) = stats.verdict(halted, slo, 0.0, None)
    assert "over-saturated" in reason
    assert stats.within_budget(calm, 2.0, 0.0) and not stats.within_budget(halted, 2.0, 0.0)
    (rec,) = stats.recommend([calm, halted], 2.0, 0.0)
    assert rec["concurrency"] == 4
