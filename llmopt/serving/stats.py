"""Figures of one load level from its requests, the price of a transaction, and the recommendation.

Percentiles are over every counted request of a level (inter-token latencies: over every gap of every request),
never averages of per-wave percentiles; beside them the mean, the standard deviation (of the population, as numpy's
and vLLM's), the minimum and the maximum. Warm-up requests are kept in requests.jsonl and left out here; so are
requests outside the steady-state window, where one is set.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmopt.errors import UsageError
from llmopt.measure.stats import percentile, percentile_upper_bound, samples_to_bound
from llmopt.serving.client import RequestResult

QUANTILES = (50, 90, 95, 99)


def quantiles(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(values, q) for q in QUANTILES}


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p95, p99, and mean, std (population), min, max; every one None where there are no values."""
    out = quantiles(values)
    n = len(values)
    mean = sum(values) / n if n else None
    out["mean"] = mean
    out["std"] = None if mean is None else (sum((v - mean) ** 2 for v in values) / n) ** 0.5
    out["min"] = min(values) if n else None
    out["max"] = max(values) if n else None
    return out


SLO_METRICS = {"ttft": "ttft_s", "tpot": "tpot_ms", "e2e": "e2e_s"}
SLO_PERCENTILES = {"ttft": 95, "tpot": 95, "e2e": 99}  # a search's verdict statistic for each, as AIPerf's defaults
_SLO_PART = re.compile(r"^(ttft|tpot|e2e)=([0-9]*\.?[0-9]+)(ms|s)?(?:@p([0-9]{1,2}(?:\.[0-9]+)?))?$")


@dataclass(frozen=True)
class Slo:
    """Service-level objectives in milliseconds (any subset of ttft, tpot, e2e), and the percentile of each that a
    search judges a level by."""

    limits_ms: dict[str, float]
    percentiles: dict[str, float] = field(default_factory=dict)
    # A level passes only when each percentile's upper confidence bound at this confidence is within its limit (not
    # just the point estimate); None: the point estimate (AIPerf's and vLLM's verdict).
    confidence: float | None = None

    def good(self, r: RequestResult) -> bool:
        """Succeeded and met every objective; TPOT is not judged on a one-token answer (it has none)."""
        if not r.ok:
            return False
        for name, limit in self.limits_ms.items():
            value = _value_ms(r, name)
            if value is None:
                if name == "tpot" and r.ttft_s is not None:
                    continue  # one output token: no TPOT, judged on the others
                return False
            if value > limit:
                return False
        return True

    def describe(self) -> str:
        return ",".join(f"{name}={limit:g}ms" for name, limit in self.limits_ms.items())


def _value_ms(r: RequestResult, name: str) -> float | None:
    if name == "ttft":
        return None if r.ttft_s is None else 1000 * r.ttft_s
    if name == "e2e":
        return None if r.e2e_s is None else 1000 * r.e2e_s
    return r.tpot_ms


def parse_slo(text: str) -> Slo:
    """'ttft=500ms,tpot=50ms,e2e=10s' (any subset; a bare number is milliseconds, as vLLM's --goodput; '@p90' sets
    the percentile a search judges by)."""
    limits: dict[str, float] = {}
    percentiles: dict[str, float] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()] or [text]:
        m = _SLO_PART.match(part.replace(" ", ""))
        if not m:
            raise UsageError(f"--slo: {part!r} is not like ttft=500ms, tpot=50ms or e2e=10s (optionally @p99)")
        name, number, unit, q = m.groups()
        value = float(number) * (1000 if unit == "s" else 1)
        if value <= 0 or name in limits:
            raise UsageError(f"--slo: {part!r} must be positive and given once")
        limits[name] = value
        quantile = float(q) if q else SLO_PERCENTILES[name]
        if not 0 < quantile < 100:
            raise UsageError(f"--slo: {part!r}: the percentile must be between 0 and 100")
        percentiles[name] = quantile
    return Slo(limits, percentiles)


def level_stats(results: Sequence[RequestResult], window_s: float, price_per_hour: float | None,
                slo: Slo | None = None, warmup_s: float = 0.0, cooldown_s: float = 0.0,
                ignore_eos: bool = False) -> dict[str, Any]:  # fmt: skip
    """The figures of one level. `window_s`: from the first measured request's send to the last one's end. Requests
    cut off at the end of --duration (or by an interrupt) are counted in `cut_off` and left out of everything else.
    An arrival never sent (`not_sent`: it waited for a slot under --max-inflight when the level ended) is a measured
    request that failed: it counts in `requests`, `errors`, the error rate and the good share.

    With a steady-state window (`warmup_s`, `cooldown_s`), only the measured requests sent at least warmup_s after
    the first measured send and ended at least cooldown_s before the last measured end are counted (an arrival never
    sent: by its scheduled time), and the window becomes theirs, from the first counted send to the last counted end;
    the others are counted in `outside_window`. `ignore_eos`: check each answer's length against the tokens asked."""
    cut = [r for r in results if not r.warmup and r.cut_off]
    every = [r for r in results if not r.warmup and not r.cut_off]
    measured = steady_state(every, warmup_s, cooldown_s)
    if warmup_s or cooldown_s:
        window_s = span(measured)
    ok = [r for r in measured if r.ok]
    errors = [r for r in measured if not r.ok]
    output_tokens = sum(r.output_tokens or 0 for r in ok)
    prompt_counted = all(r.prompt_tokens is not None for r in ok)
    input_tokens = sum(r.prompt_tokens or 0 for r in ok) if ok and prompt_counted else None
    rps = len(ok) / window_s if window_s > 0 else None
    tokens_per_s = output_tokens / window_s if window_s > 0 else None
    input_per_s = input_tokens / window_s if window_s > 0 and input_tokens is not None else None
    stats: dict[str, Any] = {
        "requests": len(measured),
        "completed": len(ok),
        "errors": len(errors),
        "error_rate": len(errors) / len(measured) if measured else None,
        "error_kinds": dict(Counter(r.error for r in errors)),
        "warmup_requests": sum(r.warmup for r in results),
        "cut_off": len(cut),
        "not_sent": sum(r.error == "not_sent" for r in measured),
        "outside_window": len(every) - len(measured),
        "window_s": window_s,
        "requests_per_s": rps,
        "transactions_per_minute": 60 * rps if rps is not None else None,
        "output_tokens_per_s": tokens_per_s,
        "input_tokens_per_s": input_per_s,
        "total_tokens_per_s": None if input_per_s is None or tokens_per_s is None else input_per_s + tokens_per_s,
        "peak_output_tokens_per_s": peak_output_tokens_per_s(ok) if window_s >= 1.0 else None,
        "peak_concurrency": peak_concurrency(results),
        "prompt_tokens_mean": _mean([r.prompt_tokens for r in ok if r.prompt_tokens is not None]),
        "output_tokens_mean": _mean([r.output_tokens for r in ok if r.output_tokens is not None]),
        "ttft_s": distribution([r.ttft_s for r in ok if r.ttft_s is not None]),
        "ttfo_s": distribution([r.ttfo_s for r in ok if r.ttfo_s is not None]),
        "e2e_s": distribution([r.e2e_s for r in ok if r.e2e_s is not None]),
        "tpot_ms": distribution([r.tpot_ms for r in ok if r.tpot_ms is not None]),
        "itl_ms": distribution([1000 * gap for r in ok for gap in r.itl_s]),
        "failed_ttft_s": distribution([r.ttft_s for r in errors if r.ttft_s is not None]),
        **cache_stats(ok),
        **answer_lengths(ok, ignore_eos),
    }
    stats["not_measured"] = not_measured(stats, ok, errors, ignore_eos)
    stats.update(goodput(measured, window_s, slo))
    stats.update(costs(price_per_hour, rps, tokens_per_s))
    turns = sorted({r.turn for r in measured if r.turn is not None})
    if turns:
        stats["turns"] = [turn_stats([r for r in measured if r.turn == t], t) for t in turns]
    return stats


def _end(r: RequestResult) -> float:
    """When a request ended (its answer or its error); an arrival never sent, at its scheduled time."""
    return r.start_s if r.error == "not_sent" else r.start_s + r.elapsed_s


def span(results: Sequence[RequestResult]) -> float:
    """From the first send to the last end of the requests that were sent."""
    sent = [r for r in results if r.error != "not_sent"]
    return max(_end(r) for r in sent) - min(r.start_s for r in sent) if sent else 0.0


def steady_state(measured: Sequence[RequestResult], warmup_s: float, cooldown_s: float) -> list[RequestResult]:
    """The measured requests sent at least `warmup_s` after the first send and ended at least `cooldown_s` before the
    last end (of the requests sent): the ramp and the drain of a level left out."""
    sent = [r for r in measured if r.error != "not_sent"]
    if not (warmup_s or cooldown_s) or not sent:
        return list(measured)
    lo = min(r.start_s for r in sent) + warmup_s
    hi = max(_end(r) for r in sent) - cooldown_s
    return [r for r in measured if r.start_s >= lo and _end(r) <= hi]


def peak_output_tokens_per_s(ok: Sequence[RequestResult]) -> float | None:
    """The most output tokens that arrived in one second: 1 s buckets from the first counted send, each streamed
    chunk of a completed request adding its request's output tokens over its chunks (the server's count spread
    evenly; vLLM's max_output_tokens_per_s counts one per chunk) to the bucket it arrived in. None without chunk
    times (not streaming); the level leaves it out where its window is shorter than a second (a count in one
    second is not a rate then)."""
    timed = [r for r in ok if r.ttft_s is not None and r.output_tokens]
    if not timed:
        return None
    t0 = min(r.start_s for r in ok)
    buckets: Counter[int] = Counter()
    for r in timed:
        assert r.ttft_s is not None and r.output_tokens
        weight = r.output_tokens / (1 + len(r.itl_s))
        t = r.start_s + r.ttft_s
        buckets[int(t - t0)] += weight
        for gap in r.itl_s:
            t += gap
            buckets[int(t - t0)] += weight
    return max(buckets.values())


def peak_concurrency(results: Sequence[RequestResult]) -> int | None:
    """The most requests in flight at one instant, from send to end (answer, error or cancellation), over every
    request the level sent, warm-up and cut-off ones included: the load the server saw. (vLLM's
    max_concurrent_requests counts the requests active in each 1 s bucket, which can exceed this.)"""
    events = sorted(
        [(r.start_s, 1) for r in results if r.error != "not_sent"]
        + [(r.start_s + r.elapsed_s, -1) for r in results if r.error != "not_sent"]
    )  # at one instant an end (-1) sorts before a start: back-to-back requests are not both in flight
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most if events else None


def answer_lengths(ok: Sequence[RequestResult], ignore_eos: bool) -> dict[str, Any]:
    """Under --ignore-eos, the completed answers the server counted shorter than the tokens asked (a server that
    ignores the flag stops at its end-of-sequence token); None where not asked or not counted by the server."""
    if not ignore_eos:
        return {"short_answers": None, "short_answers_checked": None}
    checked = [r for r in ok if r.usage_from_server and r.max_tokens and r.output_tokens is not None]
    short = [r for r in checked if (r.output_tokens or 0) < (r.max_tokens or 0)]
    return {"short_answers": len(short) if checked else None, "short_answers_checked": len(checked)}


def not_measured(stats: dict[str, Any], ok: Sequence[RequestResult], errors: Sequence[RequestResult],
                 ignore_eos: bool) -> dict[str, str]:  # fmt: skip
    """Why each figure left blank is blank (a figure not measured is never 0)."""
    why: dict[str, str] = {}
    if not ok:
        why["latency"] = "no request of the level completed"
        return why
    if stats["ttft_s"]["p50"] is None:
        for key in ("ttft_s", "ttfo_s", "itl_ms", "tpot_ms", "peak_output_tokens_per_s"):
            why[key] = "no chunk times: the answers were not streamed (--no-stream)"
    elif stats["peak_output_tokens_per_s"] is None:
        why["peak_output_tokens_per_s"] = "the window is shorter than one 1 s bucket"
    elif stats["ttfo_s"]["p50"] is None:
        why["ttfo_s"] = "no answer carried output beyond reasoning"
    if stats["tpot_ms"]["p50"] is None and "tpot_ms" not in why:
        why["tpot_ms"] = "every answer was one token"
    if stats["itl_ms"]["p50"] is None and "itl_ms" not in why:
        why["itl_ms"] = "every answer came in one chunk"
    if stats["input_tokens_per_s"] is None and stats["window_s"]:
        why["input_tokens_per_s"] = why["total_tokens_per_s"] = "the server did not report prompt tokens (usage)"
    if stats["failed_ttft_s"]["p50"] is None:
        why["failed_ttft_s"] = "no failed request had a first token" if errors else "no request failed"
    if stats["cached_share"] is None:
        why["cached_share"] = "the server reported no cached tokens (vLLM: --enable-prompt-tokens-details)"
    if not ignore_eos:
        why["short_answers"] = "checked under --ignore-eos only"
    elif stats["short_answers"] is None:
        why["short_answers"] = "the server did not count the output tokens (usage)"
    return why


def goodput(measured: Sequence[RequestResult], window_s: float, slo: Slo | None) -> dict[str, Any]:
    """Good requests (succeeded and met every SLO) per second of the window, and their share of measured requests."""
    if slo is None:
        return {}
    good = sum(slo.good(r) for r in measured)
    ok = [r for r in measured if r.ok]
    values = {name: [v for v in (_value_ms(r, name) for r in ok) if v is not None] for name in slo.limits_ms}
    statistics = {f"{name}_p{slo.percentiles[name]:g}_ms": percentile(values[name], slo.percentiles[name]) for name in values}
    bounds = {}
    if slo.confidence:
        for name in values:
            q = slo.percentiles[name]
            bounds[f"{name}_p{q:g}_ms"] = percentile_upper_bound(values[name], q, slo.confidence)
    return {
        "slo": slo.describe(),
        "slo_statistics": statistics,
        "slo_confidence": slo.confidence,
        "slo_upper_bounds": bounds or None,
        "good_requests": good,
        "goodput_requests_per_s": good / window_s if window_s > 0 else None,
        "good_share": good / len(measured) if measured else None,
    }


def cache_stats(ok: Sequence[RequestResult]) -> dict[str, Any]:
    """The prompt tokens the server says it answered from its prefix cache, over the requests whose usage says."""
    told = [r for r in ok if r.cached_tokens is not None and r.prompt_tokens]
    prompt = sum(r.prompt_tokens or 0 for r in told)
    return {
        "cached_tokens_reported": len(told),
        "cached_prompt_tokens": sum(r.cached_tokens or 0 for r in told) if told else None,
        "cached_share": sum(r.cached_tokens or 0 for r in told) / prompt if prompt else None,
    }


def turn_stats(rows: Sequence[RequestResult], turn: int) -> dict[str, Any]:
    ok = [r for r in rows if r.ok]
    return {
        "turn": turn, "requests": len(rows), "completed": len(ok), "errors": len(rows) - len(ok),
        "prompt_tokens_mean": _mean([r.prompt_tokens for r in ok if r.prompt_tokens is not None]),
        "ttft_s": distribution([r.ttft_s for r in ok if r.ttft_s is not None]),
        "ttfo_s": distribution([r.ttfo_s for r in ok if r.ttfo_s is not None]),
        "e2e_s": distribution([r.e2e_s for r in ok if r.e2e_s is not None]),
        **cache_stats(ok),
    }  # fmt: skip


def verdict(level: dict[str, Any], slo: Slo, error_budget: float, good_share_target: float | None) -> list[str]:
    """Why a level fails its SLOs (empty: it passes): each objective at its percentile, the error rate, the share of
    good requests where a target is set, and over-saturation (a level halted because its queue only grew fails,
    however well the requests sent before the halt did)."""
    reasons = [f"over-saturated ({level['saturated']})"] if level.get("saturated") else []
    bounds = level.get("slo_upper_bounds") if slo.confidence else None
    for name, limit in slo.limits_ms.items():
        key = f"{name}_p{slo.percentiles[name]:g}_ms"
        value = level["slo_statistics"].get(key)
        if value is None:
            if name != "tpot":  # answers of one token have no TPOT: judged on the rest
                reasons.append(f"no {name} measured")
            continue
        if bounds is not None:
            bound = bounds.get(key)
            if bound is None:
                need = samples_to_bound(slo.percentiles[name], slo.confidence or 0)
                reasons.append(f"too few answers to bound {key} at {slo.confidence:.0%} confidence (needs {need})")
            elif bound > limit:
                reasons.append(f"{key} {value:.0f}, its {slo.confidence:.0%} upper bound {bound:.0f} > {limit:g}")
        elif value > limit:
            reasons.append(f"{key} {value:.0f} > {limit:g}")
    if (level["error_rate"] or 0.0) > error_budget:
        reasons.append(f"error rate {level['error_rate']:.1%} > {error_budget:.1%}")
    if good_share_target is not None and (level.get("good_share") or 0.0) < good_share_target:
        reasons.append(f"good share {level.get('good_share') or 0.0:.1%} < {good_share_target:.0%}")
    if level["completed"] == 0:
        reasons.append("no request completed")
    return sorted(set(reasons), key=reasons.index)


def costs(price_per_hour: float | None, requests_per_s: float | None, output_tokens_per_s: float | None) -> dict[str, Any]:
    """What the measured throughput costs at an hourly price: per transaction, per 10k, per million output tokens."""
    per_txn = per_m_tokens = None
    if price_per_hour is not None and requests_per_s:
        per_txn = price_per_hour / (requests_per_s * 3600)
    if price_per_hour is not None and output_tokens_per_s:
        per_m_tokens = price_per_hour * 1e6 / (output_tokens_per_s * 3600)
    return {
        "price_per_hour": price_per_hour,
        "price_per_transaction": per_txn,
        "price_per_10k_transactions": per_txn * 10_000 if per_txn is not None else None,
        "price_per_1m_output_tokens": per_m_tokens,
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def within_budget(level: dict[str, Any], latency_budget_s: float, error_budget: float) -> bool:
    """p95 end-to-end latency and error rate within budget, and the level neither over-saturated nor interrupted
    (its figures cover only the requests before it stopped)."""
    if level.get("saturated") or level.get("interrupted"):
        return False
    p95 = level["e2e_s"]["p95"]
    return p95 is not None and p95 <= latency_budget_s and (level["error_rate"] or 0.0) <= error_budget


def clearly_broken(level: dict[str, Any], latency_budget_s: float | None, error_budget: float) -> str | None:
    """Why a sweep should not go on to heavier levels: most requests fail, or even the median is over budget."""
    if level["error_rate"] is not None and level["error_rate"] > max(error_budget, 0.5):
        return f"error rate {level['error_rate']:.0%} over the budget of {error_budget:.0%}"
    p50 = level["e2e_s"]["p50"]
    if latency_budget_s is not None and p50 is not None and p50 > latency_budget_s:
        return f"median latency {p50:.2f} s over the budget of {latency_budget_s} s"
    return None


def recommend(levels: Sequence[dict[str, Any]], latency_budget_s: float, error_budget: float) -> list[dict[str, Any]]:
    """For each payload bin, the heaviest load whose p95 end-to-end latency and error rate stay within budget (an
    over-saturated or interrupted level never qualifies); where the levels were judged against an SLO (`verdict`),
    the heaviest that met it."""
    out = []
    for bin_name in dict.fromkeys(level["bin"] for level in levels):
        rows = [lv for lv in levels if lv["bin"] == bin_name]
        key = "concurrency" if rows[0].get("concurrency") is not None else "rate"
        if any(lv.get("verdict") for lv in rows):
            out.append(_meets_slo(bin_name, key, rows))
            continue
        good = [lv for lv in rows if within_budget(lv, latency_budget_s, error_budget)]
        if good:
            best = max(good, key=lambda lv: lv[key])
            out.append({
                "bin": bin_name, key: best[key], "e2e_s_p95": best["e2e_s"]["p95"], "error_rate": best["error_rate"],
                "transactions_per_minute": best["transactions_per_minute"],
                "price_per_10k_transactions": best["price_per_10k_transactions"],
                "statement": f"{bin_name}: up to {key} {best[key]}: p95 latency {best['e2e_s']['p95']:.2f} s "
                f"within {latency_budget_s} s, error rate {best['error_rate']:.1%}",
            })  # fmt: skip
        else:
            tried = ", ".join(str(lv[key]) for lv in rows)
            out.append({
                "bin": bin_name, key: None, "e2e_s_p95": None, "error_rate": None, "transactions_per_minute": None,
                "price_per_10k_transactions": None,
                "statement": f"{bin_name}: no {key} tried ({tried}) keeps p95 latency within {latency_budget_s} s "
                f"and errors within {error_budget:.1%}",
            })  # fmt: skip
    return out


def _meets_slo(bin_name: str, key: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    good = [lv for lv in rows if (lv.get("verdict") or {}).get("passed") and not lv.get("interrupted")]
    best = max(good, key=lambda lv: lv[key]) if good else None
    if best is None:
        tried = ", ".join(f"{lv[key]:g}" for lv in rows)
        statement = f"{bin_name}: no {key} tried ({tried}) meets the SLO"
    else:
        statement = f"{bin_name}: up to {key} {best[key]:g} meets the SLO (p95 latency {best['e2e_s']['p95']:.2f} s, " \
                    f"error rate {best['error_rate']:.1%})"  # fmt: skip
    return {"bin": bin_name, key: best[key] if best else None,
            "e2e_s_p95": best["e2e_s"]["p95"] if best else None, "error_rate": best["error_rate"] if best else None,
            "transactions_per_minute": best["transactions_per_minute"] if best else None,
            "price_per_10k_transactions": best["price_per_10k_transactions"] if best else None,
            "statement": statement}  # fmt: skip
