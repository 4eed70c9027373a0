"""summary.json from a run's records and events: the contract that tables, plots and checks read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmopt.measure import roofline
from llmopt.measure.stats import percentile
from llmopt.models import packaged
from llmopt.quality.rouge import ROUGE_TYPES, bootstrap


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def status_of(n_docs: int, counts: dict[str, int], interrupted: bool, aborted: bool, crashed: bool) -> str:
    n_done = sum(counts.values())
    if crashed or (counts["failed"] and not counts["ok"]):
        return "failed"
    if interrupted or aborted or counts["failed"] or n_done < n_docs:
        return "partial"
    if counts["oom"]:
        return "oom"
    return "ok"


def repeat_figures(first_pass: float | None, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """docs/s of every pass of the timed loop (`--repeats`): the median, the range and the relative interquartile
    range, so that a difference between cells smaller than their spread can be called noise."""
    rates = [first_pass] if first_pass else []
    rates += [e["docs"] / e["generate_s"] for e in events if e.get("event") == "repeat" and e.get("generate_s")]
    # A pass that failed ends the repeats; the passes before it stand, and the summary says why there are no more.
    failed = next((e["error"] for e in events if e.get("event") == "repeat" and e.get("error")), None)
    if len(rates) < 2:
        return {"repeats": len(rates) or None, "docs_per_sec_repeats": None, "docs_per_sec_min": None,
                "docs_per_sec_max": None, "docs_per_sec_riqr": None, "repeat_error": failed}  # fmt: skip
    median = percentile(rates, 50)
    assert median is not None
    return {
        "repeats": len(rates),
        "docs_per_sec_repeats": rates,
        "docs_per_sec_median": median,
        "docs_per_sec_min": min(rates),
        "docs_per_sec_max": max(rates),
        "docs_per_sec_riqr": ((percentile(rates, 75) or 0) - (percentile(rates, 25) or 0)) / median if median else None,
        "repeat_error": failed,
    }


def energy_figures(sessions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Joules over the document loops (every pass), per document and per 1,000 output tokens generated in them, and
    the mean power; null with the reason where no counter could be read."""
    measured = [s for s in sessions if s.get("energy_j") is not None]
    if not measured:
        note = next((s.get("energy_note") for s in reversed(sessions) if s.get("energy_note")), "no energy counter")
        return {"energy_j": None, "energy_per_doc_j": None, "energy_per_1k_output_tokens_j": None, "mean_power_w": None,
                "energy_source": None, "energy_note": note}  # fmt: skip
    joules = sum(s["energy_j"] for s in measured)
    docs = sum(s.get("docs_generated") or 0 for s in measured)
    tokens = sum(s.get("tokens_generated") or 0 for s in measured)
    seconds = sum(s.get("run_s") or 0.0 for s in measured)
    return {
        "energy_j": joules,
        "energy_per_doc_j": joules / docs if docs else None,
        "energy_per_1k_output_tokens_j": 1000 * joules / tokens if tokens else None,
        "mean_power_w": joules / seconds if seconds else None,
        "energy_source": measured[-1].get("energy_source"),
        "energy_note": None,
    }


def gpu_memory(describe: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    """The one GPU memory figure that compares engines, and what it is. An engine that reserves its share of the card
    up front (vLLM: gpu_memory_utilization of it, whatever the model) is given its weights plus the KV cache it
    allocated, not that reservation; a model in this process's allocator, the allocator's peak; another engine
    (llama.cpp), what the device held less its use before the load (NVML)."""
    choices = (
        ("engine: weights + KV cache", describe.get("engine_memory_bytes") if describe.get("device") == "cuda" else None),
        ("allocator peak", figures.get("peak_gpu_mem_bytes")),
        ("device reserved (NVML), idle use subtracted", figures.get("peak_gpu_device_reserved_bytes")),
        ("device used (NVML)", figures.get("peak_gpu_device_used_bytes")),
    )
    source, value = next(((s, v) for s, v in choices if v is not None), (None, None))
    return {"gpu_memory_bytes": value, "gpu_memory_source": source}


def build(
    identity: dict[str, Any],
    n_docs: int,
    records: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    device: str,
) -> dict[str, Any]:
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "oom", "skipped", "failed")}
    done = [r for r in records if r["status"] == "ok"]
    sessions = [e for e in events if e.get("event") == "session"]
    ooms = [e for e in events if e.get("event") == "oom"]
    last = sessions[-1] if sessions else {}
    # A resume with nothing left to do loads no model; load time and engine facts come from the last that did.
    loaded = next((s for s in reversed(sessions) if s.get("load_s") is not None), {})
    # Every generate_batch call counts, the ones that ran out of memory too: that time was spent.
    generate_s = sum(r["generate_s"] for r in done) + sum(e["generate_s"] for e in ooms)
    output_tokens = sum(r["output_tokens"] for r in done)
    ttfts = [r["ttft_s"] for r in done if r.get("ttft_s") is not None]
    tpots = [
        (r["latency_s"] - r["ttft_s"]) / (r["output_tokens"] - 1) * 1000
        for r in done
        if r.get("ttft_s") is not None and r.get("latency_s") is not None and r["output_tokens"] > 1
    ]

    describe = loaded.get("describe") or {}
    engine_batching = describe.get("batching") == "engine"
    # An engine that schedules its own batches makes --batch-size meaningless: say so instead of a number.
    batch_size = None if engine_batching else loaded.get("batch_size", identity["batch_size"])
    if batch_size == "auto":  # a run stopped before its probe finished
        batch_size = None

    def peak(key: str) -> int | None:
        values = [s[key] for s in sessions if s.get(key) is not None]
        return max(values) if values else None

    def latest(key: str) -> Any:
        return next((s[key] for s in reversed(sessions) if s.get(key) is not None), None)

    summary: dict[str, Any] = {
        "strategy": identity["strategy"],
        "model": identity["model"],
        "model_note": packaged.note(identity["model"]),  # a packaged real model: which weights these are
        "dataset": identity["dataset"],
        "n_docs": n_docs,
        "n_completed": counts["ok"],
        "n_oom": counts["oom"],
        "n_skipped": counts["skipped"],
        "n_failed": counts["failed"],
        "status": status_of(n_docs, counts, bool(last.get("interrupted")), bool(last.get("aborted")), bool(last.get("error"))),
        "batch_size": batch_size,
        "download_s": loaded.get("download_s"),
        "load_s": loaded.get("load_s"),
        "warmup_s": loaded.get("warmup_s"),
        "generate_s": generate_s,
        "run_s": sum(looped) if (looped := [s["run_s"] for s in sessions if s.get("run_s") is not None]) else None,
        "docs_per_sec": counts["ok"] / generate_s if generate_s > 0 else None,
        "output_tokens_per_s": output_tokens / generate_s if generate_s > 0 else None,
        "prompt_tokens_mean": _mean([r["prompt_tokens"] for r in done]),
        "output_tokens_mean": _mean([r["output_tokens"] for r in done]),
        "ttft_s_p50": percentile(ttfts, 50),
        "ttft_s_p95": percentile(ttfts, 95),
        "tpot_ms_p50": percentile(tpots, 50),
        "peak_gpu_mem_bytes": peak("peak_gpu_mem_bytes"),
        "peak_gpu_reserved_bytes": peak("peak_gpu_reserved_bytes"),
        "peak_gpu_device_used_bytes": peak("peak_gpu_device_used_bytes"),
        "peak_gpu_device_reserved_bytes": peak("peak_gpu_device_reserved_bytes"),
        "gpu_device_idle_bytes": latest("gpu_device_idle_bytes"),
        "peak_rss_bytes": peak("peak_rss_bytes"),
        "gpu_memory_note": last.get("gpu_memory_note"),
        **energy_figures(sessions),
    }
    summary.update(gpu_memory(describe, summary))
    passes = repeat_figures(summary["docs_per_sec"], events)
    if passes.get("docs_per_sec_median") is not None:  # several passes: the median is the figure, the first is kept
        summary["docs_per_sec_first_pass"] = summary["docs_per_sec"]
        summary["docs_per_sec"] = passes.pop("docs_per_sec_median")
        if summary["output_tokens_mean"] is not None:
            summary["output_tokens_per_s"] = summary["docs_per_sec"] * summary["output_tokens_mean"]
    summary.update(passes)
    weights = identity.get("options", {}).get("weights", "pretrained")
    quality_note = None
    if weights == "random":
        quality_note = "not applicable: random weights"
    elif identity["dataset"].startswith("workload:"):
        quality_note = "not applicable: synthetic prompts without text"
    for kind in ROUGE_TYPES:
        scores = [r[kind] for r in done if r.get(kind) is not None]
        agg = bootstrap(scores) if scores else None
        summary[kind] = agg.mid if agg else None
        summary[f"{kind}_ci95"] = [agg.low, agg.high] if agg else None
        summary[f"{kind}_mean"] = agg.mean if agg else None
    bound = roofline.for_summary(
        device, describe, identity["strategy"], batch_size, [(r["prompt_tokens"], r["output_tokens"]) for r in done]
    )
    pct = None
    if bound["roofline_docs_per_sec"] and summary["docs_per_sec"]:
        pct = 100 * summary["docs_per_sec"] / bound["roofline_docs_per_sec"]
    auto = [e for e in events if e.get("event") == "auto_batch"]
    summary.update(
        rouge_note=quality_note,
        weights=weights,
        batch_size_requested=identity["batch_size"],
        auto_batch=auto[-1]["tried"] if auto else None,
        **bound,
        pct_of_roofline=pct,
        oom_events=[{"batch_size": e["batch_size"], "doc_ids": e["doc_ids"], "stage": e.get("stage", "generate")} for e in ooms],
        oom_at_load=next((e["error"] for e in ooms if e.get("stage") == "load"), None),
        skipped=[{"id": r["id"], "reason": r["reason"]} for r in records if r["status"] == "skipped"],
        errors=sorted({r["reason"] for r in records if r["status"] == "failed"}) + ([last["error"]] if last.get("error") else []),
        device=device,
        dtype=describe.get("dtype"),
        engine=describe,
        batching=describe.get("batching", "static"),
        prompt=identity["prompt"],
        max_new_tokens=identity["max_new_tokens"],
        sampling=identity["sampling"],
        seed=identity["seed"],
        ignore_eos=identity["ignore_eos"],
        rouge_method="rouge-score F1, no stemmer, evaluate's tokenization; value = median of 1000 seeded bootstrap means",
    )
    if summary["status"] == "failed" and not summary["errors"]:
        summary["errors"] = ["failed"]
    return summary
