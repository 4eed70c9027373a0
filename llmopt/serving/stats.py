"""Figures of one load level from its requests, the price of a transaction, and the recommendation.

Percentiles are over every measured request of a level (inter-token latencies: over every gap of every request),
never averages of per-wave percentiles. Warm-up requests are kept in requests.jsonl and left out here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from llmopt.measure.stats import percentile
from llmopt.serving.client import RequestResult

QUANTILES = (50, 90, 95, 99)


def quantiles(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(values, q) for q in QUANTILES}


def level_stats(results: Sequence[RequestResult], window_s: float, price_per_hour: float | None) -> dict[str, Any]:
    """The figures of one level. `window_s`: from the first measured request's send to the last one's end."""
    measured = [r for r in results if not r.warmup]
    ok = [r for r in measured if r.ok]
    errors = [r for r in measured if not r.ok]
    output_tokens = sum(r.output_tokens or 0 for r in ok)
    rps = len(ok) / window_s if window_s > 0 else None
    tokens_per_s = output_tokens / window_s if window_s > 0 else None
    stats: dict[str, Any] = {
        "requests": len(measured),
        "completed": len(ok),
        "errors": len(errors),
        "error_rate": len(errors) / len(measured) if measured else None,
        "error_kinds": dict(Counter(r.error for r in errors)),
        "warmup_requests": len(results) - len(measured),
        "window_s": window_s,
        "requests_per_s": rps,
        "transactions_per_minute": 60 * rps if rps is not None else None,
        "output_tokens_per_s": tokens_per_s,
        "prompt_tokens_mean": _mean([r.prompt_tokens for r in ok if r.prompt_tokens is not None]),
        "output_tokens_mean": _mean([r.output_tokens for r in ok if r.output_tokens is not None]),
        "ttft_s": quantiles([r.ttft_s for r in ok if r.ttft_s is not None]),
        "e2e_s": quantiles([r.e2e_s for r in ok if r.e2e_s is not None]),
        "tpot_ms": quantiles([r.tpot_ms for r in ok if r.tpot_ms is not None]),
        "itl_ms": quantiles([1000 * gap for r in ok for gap in r.itl_s]),
    }
    stats.update(costs(price_per_hour, rps, tokens_per_s))
    return stats


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
    """For each payload bin, the heaviest load whose p95 end-to-end latency and error rate stay within budget."""
    out = []
    for bin_name in dict.fromkeys(level["bin"] for level in levels):
        rows = [lv for lv in levels if lv["bin"] == bin_name]
        good = [lv for lv in rows if within_budget(lv, latency_budget_s, error_budget)]
        key = "concurrency" if rows[0].get("concurrency") is not None else "rate"
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
