"""What the load test counts and times, against tests/instant_server.py (a server that does no work, on a fixed
schedule of chunks that it logs): the client's clocks on a reasoning stream, what a level counts when its arrivals
could not all be sent, its steady-state window, Ctrl-C, the health watch, and the figures a serving engineer expects.
The client is the thing under test; the server is a peer whose timing is known."""

from __future__ import annotations

import itertools
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, read_json, read_jsonl, run_module, write_jsonl
from test_loadgen_selfcheck import start_instant

from llmopt.serving import stats
from llmopt.serving.client import RequestResult
from llmopt.serving.loadgen import gamma_arrivals


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


def test_every_scheduled_arrival_is_a_record_and_counts(tmp_path: Path):
    """An open loop of about 100 arrivals in 2 s against a server that takes 2 s a request, 4 in flight at most: the
    arrivals that never got a slot are records (`not_sent`, with why) and count in requests and the error rate."""
    proc, url = start_instant("--chunks", "8", "--gap-ms", "250")
    try:
        out = tmp_path / "lt"
        result = loadtest(out, url, "--rate", "50", "--duration", "2", "--grace", "1", "--max-inflight", "4",
                          "--warmup-requests", "0", "--seed", "1", "--no-server-metrics")  # fmt: skip
    finally:
        stop(proc)
    assert result.returncode == 0, result.stderr
    due = sum(1 for _ in itertools.takewhile(lambda t: t <= 2.0, gamma_arrivals(50.0, 1.0, 0.0, seed=1)))
    records = read_jsonl(out / "levels" / "all" / "r50" / "requests.jsonl")
    assert len(records) == due, "one record per arrival that came due"
    not_sent = [r for r in records if r["error"] == "not_sent"]
    assert len(not_sent) >= due - 8 and all("--max-inflight 4" in r["detail"] for r in not_sent)
    level = read_json(out / "summary.json")["levels"][0]
    assert level["requests"] == due - level["cut_off"] and level["not_sent"] == len(not_sent)
    assert level["error_rate"] == pytest.approx(level["errors"] / level["requests"]) and level["error_rate"] > 0.9


def test_the_wait_for_a_slot_is_not_the_clients_lag(tmp_path: Path):
    """20 arrivals in about a second, 2 in flight, 0.2 s a request: most wait for a slot, the last ones long. That
    wait is `queued_s` (vLLM's client queue time); the send lag, a late send with a slot free, stays small, so the
    level is not flagged client-bound for it."""
    proc, url = start_instant("--chunks", "4", "--gap-ms", "50")
    try:
        out = tmp_path / "lt"
        result = loadtest(out, url, "--rate", "20", "--requests", "20", "--max-inflight", "2", "--warmup-requests", "0",
                          "--seed", "2", "--no-server-metrics", "--no-saturation-stop")  # fmt: skip
    finally:
        stop(proc)
    assert result.returncode == 0, result.stderr
    records = read_jsonl(out / "levels" / "all" / "r20" / "requests.jsonl")
    assert len(records) == 20 and all(r["ok"] for r in records)
    client = read_json(out / "summary.json")["levels"][0]["client"]
    assert "send lag" not in (client["client_bound"] or "")
    lags = sorted(r["late_s"] for r in records)
    assert lags[len(lags) // 2] < 0.05, "with the wait for a slot apart, the sends were on time"
    assert max(r["queued_s"] for r in records) > 0.3, "the later arrivals waited for a slot"
    assert client["queue_wait_ms"]["max"] > 300


@pytest.mark.parametrize("load", [("--concurrency", "1"), ("--rate", "5")])
def test_synthetic_prompts_are_made_off_the_clock_in_a_duration_level(tmp_path: Path, load: tuple[str, str]):
    """Prompts of 2,000 tokens take tens of milliseconds each to make (a round trip through the tokenizer). In a
    --duration level they are made before the clock or on a thread of their own, never between a request's
    schedule and its send: the send lag stays at the loop's own jitter."""
    proc, url = start_instant("--chunks", "8", "--gap-ms", "25")
    try:
        out = tmp_path / "lt"
        result = loadtest(out, url, *load, "--duration", "2", "--synthetic-tokens", "2000", "--tokenizer", "tiny",
                          "--warmup-requests", "0", "--no-server-metrics", "--seed", "3")  # fmt: skip
    finally:
        stop(proc)
    assert result.returncode == 0, result.stderr
    records = measured(read_jsonl(next((out / "levels").rglob("requests.jsonl"))))
    assert len(records) >= 5 and all(r["ok"] for r in records)
    lags = sorted(1000 * r["late_s"] for r in records)
    assert lags[len(lags) // 2] < 10, f"send lag (ms) {lags}"
    assert read_json(out / "summary.json")["levels"][0]["prompts_made_late"] == 0


def offline_reference(folder: Path, prediction: str, **identity: object) -> Path:
    """An `llmopt run` folder as that command writes it (records.jsonl, config.json), every sample document answered
    with `prediction`: the reference the load test pairs its answers with."""
    from llmopt.documents.datasets import load_dataset

    folder.mkdir()
    rows = [{"id": d.id, "status": "ok", "prediction": prediction} for d in load_dataset("sample")]
    write_jsonl(folder / "records.jsonl", rows)
    base = {"model": "instant", "dataset": "sample", "prompt": "chat", "max_new_tokens": 4, "sampling": "greedy",
            "ignore_eos": False}  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"identity": {**base, **identity}}))
    return folder


def test_multi_turn_and_prefixed_quality_compare_like_with_like(tmp_path: Path):
    """Conversations of 3 turns over the 22 sample documents, answers that depend on the history (as a model's do):
    a document sent at turn 1 and again at turn 2 got two different inputs, so two answers that differ are not a
    sign of batching; a later turn is scored on its own and never against the offline single-prompt prediction. With
    a shared prefix, answers are still scored, and not compared with an offline run that had no prefix."""
    proc, url = start_instant("--chunks", "4", "--by-history")
    reference = offline_reference(tmp_path / "offline", " tok1" * 4)
    try:
        out = tmp_path / "turns"
        result = loadtest(out, url, "--api", "chat", "--turns", "3", "--concurrency", "1", "--requests", "8",
                          "--max-tokens", "4", "--quality-reference", str(reference), "--no-server-metrics")  # fmt: skip
        assert result.returncode == 0, result.stderr
        prefixed = tmp_path / "prefixed"
        result = loadtest(prefixed, url, "--concurrency", "1", "--requests", "6", "--max-tokens", "4", "--tokenizer",
                          "tiny", "--shared-prefix-tokens", "16", "--bins", "1-100000", "--quality-reference",
                          str(reference), "--no-server-metrics")  # fmt: skip
        assert result.returncode == 0, result.stderr
    finally:
        stop(proc)
    summary = read_json(out / "summary.json")
    assert summary["quality"]["consistency"]["differing"] == [], "only the same input is compared across answers"
    quality = summary["levels"][0]["quality"]
    records = measured(read_jsonl(out / "levels" / "all" / "c1" / "requests.jsonl"))
    first_turns = [r for r in records if r["turn"] == 1]
    assert len({r["document"] for r in records}) < len(records), "some documents came back at another turn"
    assert quality["answers"] == len(first_turns) == 8
    assert quality["vs_reference"]["answers"] == 8 and quality["vs_reference"]["agreement"] == 1.0
    assert [(t["turn"], t["answers"]) for t in quality["by_turn"]] == [(1, 8), (2, 8), (3, 8)]
    assert any("later turns" in note for note in quality["notes"])
    assert summary["quality"]["reference_notes"] == [], "chat template on both sides, same budget"
    quality = read_json(prefixed / "summary.json")["levels"][0]["quality"]
    assert quality is not None and quality["answers"] == 6 and "vs_reference" not in quality
    assert any("shared prefix" in note for note in quality["notes"])


def test_quality_notes_name_ignore_eos_and_the_chat_template():
    """The offline reference ran without --ignore-eos, or without the chat template that a --api chat test's server
    applied: its predictions differ by design, and the notes say so (and nothing where both match)."""
    from llmopt.serving.loadquality import reference_notes

    plain = {"model": "m", "dataset": "sample", "prompt": "published-hf", "max_new_tokens": 8, "ignore_eos": False}
    notes = reference_notes(plain, "m", "sample", "published-hf", 8, ignore_eos=True, api="chat")
    assert len(notes) == 2
    assert any("chat template" in n and "--api chat" in n for n in notes)
    assert any("--ignore-eos" in n for n in notes)
    assert reference_notes({**plain, "prompt": "chat", "ignore_eos": True}, "m", "sample", "published-hf", 8, True, "chat") == []
    assert reference_notes(plain, "m", "sample", "published-hf", 8, False, "completions") == []
    (note,) = reference_notes({**plain, "prompt": "chat"}, "m", "sample", "published-hf", 8, False, "completions")
    assert "chat template" in note


def test_a_synthetic_prompt_is_exactly_n_tokens():
    """The round trip through text can grow a draw (byte pieces, merges) or shrink it: the prompt is cut and padded
    until the tokenizer reads exactly N tokens back (special tokens aside: a server adds its BOS or template)."""
    from llmopt.documents.workloads import RandomText
    from llmopt.serving.loadtest import load_tokenizer

    tokenizer = load_tokenizer("tiny")
    text = RandomText(tokenizer, seed=0)
    for n in (1, 7, 64, 512):
        counts = {len(tokenizer(text.text(n, k), add_special_tokens=False)["input_ids"]) for k in range(40)}
        assert counts == {n}, (n, counts)


def test_the_first_ctrl_c_ends_the_level_in_hand_and_keeps_it(tmp_path: Path):
    """Ctrl-C a few seconds into the first of two 20 s levels: that level ends within a second or so, in flight
    requests cancelled (left out), its figures kept and marked interrupted; the second level is listed as not run;
    the command says so and exits 130; every line of requests.jsonl is whole."""
    proc, url = start_instant("--chunks", "8", "--gap-ms", "50")
    out = tmp_path / "lt"
    cmd = [sys.executable, "-m", "llmopt.loadtest", "--endpoint", url, "--concurrency", "2,4", "--duration", "20",
           "--no-plots", "--no-server-metrics", "--out", str(out)]  # fmt: skip
    try:
        test = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=cli_env())
        requests = out / "levels" / "all" / "c2" / "requests.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not requests.is_file() or len(requests.read_text().splitlines()) < 6):
            time.sleep(0.1)
        test.send_signal(signal.SIGINT)
        hit = time.monotonic()
        _, stderr = test.communicate(timeout=60)
        took = time.monotonic() - hit
    finally:
        stop(proc)
    assert test.returncode == 130, stderr
    assert took < 10, "the level in hand ends, not after its 20 s"
    summary = read_json(out / "summary.json")
    (level,) = summary["levels"]
    assert level["interrupted"] and level["concurrency"] == 2 and level["completed"] >= 4
    assert summary["stopped_early"] == [{"bin": "all", "concurrency": 4, "reason": "interrupted"}]
    assert summary["interrupted"] and not summary["complete"]
    records = [json.loads(line) for line in requests.read_text().splitlines()]  # every line whole
    assert sum(r["ok"] and not r["warmup"] for r in records) == level["completed"]
    assert all(r["error"] == "interrupted" for r in records if r["cut_off"])
    assert "interrupted" in stderr and "concurrency 4" in stderr
    assert "2 (interrupted)" in (out / "report.md").read_text()


def test_a_busy_servers_slow_health_does_not_end_the_level(tmp_path: Path):
    """/health answers, but only after 1.2 s (a busy server): a level of 5 s runs to its end. A server that is gone
    (refused connections, a /health that fails for several seconds) is tests/test_loadtest_workloads.py's."""
    proc, url = start_instant("--chunks", "8", "--gap-ms", "50", "--health-ms", "1200")
    try:
        out = tmp_path / "lt"
        result = loadtest(out, url, "--concurrency", "2", "--duration", "5", "--no-server-metrics")
    finally:
        stop(proc)
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["server_gone"] is None and summary["complete"]
    assert summary["levels"][0]["completed"] >= 10


def test_report_warns_when_two_load_tests_ran_different_workloads(tmp_path: Path):
    """Two tests of the same server, one asking 8 tokens over completions, the other 16 over chat with
    --ignore-eos: their levels pair up all the same, and the comparison says, on stderr and in its page, which
    settings of the workload differ."""
    proc, url = start_instant("--chunks", "4")
    try:
        a, b = tmp_path / "a", tmp_path / "b"
        for out, extra in ((a, ("--max-tokens", "8")), (b, ("--max-tokens", "16", "--api", "chat", "--ignore-eos"))):
            result = loadtest(out, url, "--concurrency", "1", "--requests", "4", "--no-server-metrics", *extra)
            assert result.returncode == 0, result.stderr
    finally:
        stop(proc)
    done = run_module("llmopt.report", a, b, "--out", tmp_path / "cmp")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "cmp" / "loadtest_comparison.md").read_text()
    for setting in ("max_tokens", "ignore_eos", "api"):
        assert f"warning: {setting}" in done.stderr and f"{setting}" in page, setting
    assert "turns" not in done.stderr and "model" not in done.stderr, "only what differs"


def timed(start: float, ttft: float, gaps: list[float], tokens: int, prompt: int = 10, max_tokens: int | None = None,
          error: str | None = None) -> RequestResult:  # fmt: skip
    e2e = None if error else ttft + sum(gaps)
    r = RequestResult("p", start, e2e, ttft, gaps, prompt, None if error else tokens, usage_from_server=True, error=error)
    r.elapsed_s = ttft + sum(gaps)
    r.max_tokens = max_tokens
    return r


def test_figures_a_serving_engineer_expects_by_hand():
    """Mean, std, min and max beside the percentiles; input and total token throughput; peak output tokens per second
    (1 s buckets) and peak concurrency (in flight at one instant); the TTFT of failed requests; answers shorter than
    asked under --ignore-eos; and the steady-state window, all from requests whose times are known."""
    a = timed(0.0, 0.5, [0.25, 0.25, 0.25], 8, prompt=100, max_tokens=8)  # chunks at 0.5, 0.75, 1.0, 1.25: 2 tokens each
    b = timed(0.2, 0.3, [0.1], 4, prompt=50, max_tokens=8)  # chunks at 0.5, 0.6: 2 tokens each; 4 of 8 asked
    failed = timed(1.0, 0.4, [], 0, error="server_disconnected")  # a first token at 1.4, then the connection broke
    warm = timed(-1.0, 0.1, [0.1], 2)
    warm.warmup = True
    figures = stats.level_stats([warm, a, b, failed], 2.0, None, ignore_eos=True)
    assert figures["ttft_s"] == {"p50": 0.4, "p90": pytest.approx(0.48), "p95": pytest.approx(0.49), "p99": pytest.approx(0.498),
                                 "mean": 0.4, "std": pytest.approx(0.1), "min": 0.3, "max": 0.5}  # fmt: skip
    assert figures["e2e_s"]["mean"] == pytest.approx((1.25 + 0.4) / 2) and figures["e2e_s"]["max"] == 1.25
    assert figures["input_tokens_per_s"] == 150 / 2.0 and figures["total_tokens_per_s"] == (150 + 12) / 2.0
    # Bucket [0, 1): a's chunks at 0.5 and 0.75, b's at 0.5 and 0.6: 4 + 4 tokens; [1, 2): a's last two: 4.
    assert figures["peak_output_tokens_per_s"] == 8
    short = stats.level_stats([a, b], 0.5, None)
    assert short["peak_output_tokens_per_s"] is None and "1 s" in short["not_measured"]["peak_output_tokens_per_s"]
    # In flight: warm-up [-1, -0.8], a [0, 1.25], b [0.2, 0.6], failed [1.0, 1.4]: two at most.
    assert figures["peak_concurrency"] == 2
    assert figures["failed_ttft_s"]["p50"] == 0.4 and figures["failed_ttft_s"]["max"] == 0.4
    assert (figures["short_answers"], figures["short_answers_checked"]) == (1, 2)
    assert "short_answers" not in figures["not_measured"] and "cached_share" in figures["not_measured"]
    # Steady state: 0.1 s after the first send (0.0) to 0.1 s before the last end (1.4): only b is counted.
    steady = stats.level_stats([warm, a, b, failed], 2.0, None, warmup_s=0.1, cooldown_s=0.1)
    assert (steady["requests"], steady["outside_window"], steady["window_s"]) == (1, 2, pytest.approx(0.4))
    assert steady["short_answers"] is None and steady["not_measured"]["short_answers"] == "checked under --ignore-eos only"
    streamless = stats.level_stats([RequestResult("p", 0.0, 1.0, None, [], 10, 8)], 1.0, None)
    assert streamless["peak_output_tokens_per_s"] is None and "--no-stream" in streamless["not_measured"]["ttft_s"]


def test_a_server_that_ignores_ignore_eos_is_named(tmp_path: Path):
    """The instant server always sends 4 tokens: asked for 8 with --ignore-eos, every answer is short, and the
    warning names the server; asked for 4, none is."""
    proc, url = start_instant("--chunks", "4")
    try:
        short, exact = tmp_path / "short", tmp_path / "exact"
        for out, tokens in ((short, "8"), (exact, "4")):
            result = loadtest(out, url, "--concurrency", "2", "--requests", "6", "--max-tokens", tokens, "--ignore-eos",
                              "--no-server-metrics")  # fmt: skip
            assert result.returncode == 0, result.stderr
    finally:
        stop(proc)
    summary = read_json(short / "summary.json")
    level = summary["levels"][0]
    assert (level["short_answers"], level["short_answers_checked"]) == (6, 6)
    (warning,) = [w for w in summary["warnings"] if "ignored --ignore-eos" in w]
    assert url in warning and "instant" in warning
    level = read_json(exact / "summary.json")["levels"][0]
    assert (level["short_answers"], level["short_answers_checked"]) == (0, 6)
    assert not any("ignore-eos" in w for w in level["warnings"])


def test_defaults_do_not_defeat_the_test(tmp_path: Path):
    """Without --seed each test draws a fresh seed (recorded; --seed replays it); with a tokenizer and no dataset asked
    for, the prompts are unique synthetic ones (50 a level); without a tokenizer, one pass of the sample's prompts a
    level, warm-up included, so that no level repeats its own prompts. The choices are said and recorded."""
    proc, url = start_instant("--chunks", "4")
    runs = {name: tmp_path / name for name in ("a", "b", "sample", "seeded")}
    try:
        for name in ("a", "b"):
            result = loadtest(runs[name], url, "--concurrency", "2", "--tokenizer", "tiny", "--no-server-metrics")
            assert result.returncode == 0, result.stderr
        assert "fresh for this test" in result.stderr and "synthetic prompts of 512 tokens" in result.stderr
        result = loadtest(runs["sample"], url, "--concurrency", "2", "--no-server-metrics")
        assert result.returncode == 0, result.stderr
        result = loadtest(runs["seeded"], url, "--concurrency", "2", "--requests", "2", "--seed", "7", "--no-server-metrics")
        assert result.returncode == 0, result.stderr
    finally:
        stop(proc)
    a, b, sample, seeded = (read_json(out / "summary.json") for out in runs.values())
    assert a["load"]["seed_fresh"] and b["load"]["seed_fresh"] and a["load"]["seed"] != b["load"]["seed"]
    assert (seeded["load"]["seed"], seeded["load"]["seed_fresh"]) == (7, False)
    assert a["payloads"]["source"] == "synthetic:512" and a["payloads"]["unique_per_request"]
    assert a["levels"][0]["requests"] == 50 and a["payloads"]["defaults_chosen"]
    records = read_jsonl(runs["a"] / "levels" / "synthetic-512" / "c2" / "requests.jsonl")
    assert len({r["prompt_key"] for r in records}) == len(records) == 52, "no prompt sent twice"
    level = sample["levels"][0]
    assert sample["payloads"]["source"] == "sample" and level["requests"] == 22 - 2 and level["payload_repeats"] == 0
    assert any("one pass" in line for line in sample["payloads"]["defaults_chosen"])


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_chunks_that_carry_no_token_are_not_tokens(tmp_path: Path, api: str):
    """A stream framed as llama.cpp's and vLLM's chat streams are: a role announcement 40 ms before the first token,
    a closing choice with only its finish reason 40 ms after the last, and no usage. Neither frame is a token: TTFT is
    the first token's, the output tokens are the 6 that carried text, and no inter-token gap is the frame's."""
    log = tmp_path / "sent.jsonl"
    proc, url = start_instant("--chunks", "6", "--first-ms", "60", "--gap-ms", "10", "--framed", "40", "--log", str(log))
    try:
        out = tmp_path / "lt"
        result = loadtest(out, url, "--api", api, "--concurrency", "1", "--requests", "4", "--no-server-metrics")
    finally:
        stop(proc)
    assert result.returncode == 0, result.stderr
    records = measured(read_jsonl(out / "levels" / "all" / "c1" / "requests.jsonl"))
    sent = read_jsonl(log)
    first = statistics.median(1000 * (row["actual"][0] - row["arrived"]) for row in sent)
    assert statistics.median(1000 * r["ttft_s"] for r in records) == pytest.approx(first, abs=15)
    assert all(not r["usage_from_server"] and r["output_tokens"] == 6 and len(r["itl_ms"]) == 5 for r in records)
    assert max(g for r in records for g in r["itl_ms"]) < 35, "no gap is the closing frame's 40 ms"
