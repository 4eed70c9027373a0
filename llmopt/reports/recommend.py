"""Quality against speed: the Pareto front, the recommendations (the fastest cell that passes the quality gate among
them), what a cell costs at an hourly price and per kWh, and which speed differences are within noise."""

from __future__ import annotations

from llmopt.reports.rows import Row

ROUGE_MARGIN = 0.01  # "within 1 point" of the best ROUGE-1


def pareto(rows: list[Row]) -> list[Row]:
    """Rows no other row beats on both docs/s and ROUGE-1."""
    usable = [r for r in rows if r.usable]

    def dominated(r: Row) -> bool:
        return any(
            o.get("docs_per_sec") >= r.get("docs_per_sec")
            and o.get("rouge1") >= r.get("rouge1")
            and (o.get("docs_per_sec") > r.get("docs_per_sec") or o.get("rouge1") > r.get("rouge1"))
            for o in usable
        )

    return sorted((r for r in usable if not dominated(r)), key=lambda r: -r.get("docs_per_sec"))


def cost_per_million_tokens(row: Row, price_per_hour: float) -> float | None:
    tps = row.get("output_tokens_per_s")
    return price_per_hour * 1e6 / (3600 * tps) if tps else None


def cost_per_100_docs(row: Row, price_per_hour: float) -> float | None:
    dps = row.get("docs_per_sec")
    return price_per_hour * 100 / (3600 * dps) if dps else None


def noise_band(row: Row) -> tuple[float, float] | None:
    """The range of a row's docs/s over its repeated timed loops, or None with a single pass."""
    low, high = row.get("docs_per_sec_min"), row.get("docs_per_sec_max")
    return (low, high) if low is not None and high is not None else None


def within_noise(a: Row, b: Row) -> bool:
    """Two rows whose docs/s ranges over their repeats overlap: their difference is not shown to be real."""
    band_a, band_b = noise_band(a), noise_band(b)
    return band_a is not None and band_b is not None and band_a[0] <= band_b[1] and band_b[0] <= band_a[1]


def energy_cost_per_100_docs(row: Row, price_per_kwh: float) -> float | None:
    joules = row.get("energy_per_doc_j")
    return price_per_kwh * joules * 100 / 3.6e6 if joules is not None else None


def recommendations(rows: list[Row], price_per_kwh: float | None = None) -> list[str]:
    """The report's recommendations; costs use each row's own price per hour (its GPU type's, where given)."""
    usable = [r for r in rows if r.usable]
    floors = [f"- Quality floor without a model: **{r.cell}**, ROUGE-1 {r.get('rouge1'):.4f}; a model below it adds nothing."
              for r in rows if r.baseline and r.get("rouge1") is not None]  # fmt: skip
    absent = [r.cell for r in rows if r.get("status") == "unavailable"]
    if absent:  # the comparison below is among what ran; say what it could not include
        floors.append(f"- Not compared, since this machine cannot run them: {', '.join(f'**{c}**' for c in absent)} "
                      "(see \"Not available on this machine\").")  # fmt: skip
    if not usable:
        return ["- No model cell completed with both a speed and a ROUGE score; nothing to recommend.", *floors]
    fastest = max(usable, key=lambda r: r.get("docs_per_sec"))
    best = max(usable, key=lambda r: r.get("rouge1"))
    near = [r for r in usable if r.get("rouge1") >= best.get("rouge1") - ROUGE_MARGIN]
    balanced = max(near, key=lambda r: r.get("docs_per_sec"))
    tied = [r.cell for r in usable if r is not fastest and within_noise(r, fastest)]
    lines = [
        f"- Fastest: **{fastest.cell}**, {fastest.get('docs_per_sec'):.3f} docs/s (ROUGE-1 {fastest.get('rouge1'):.4f})"
        + (f"; within noise of it (their repeats overlap): {', '.join(tied)}." if tied else "."),
        f"- Best ROUGE-1: **{best.cell}**, {best.get('rouge1'):.4f} ({best.get('docs_per_sec'):.3f} docs/s).",
        f"- Best ROUGE-1 within {ROUGE_MARGIN * 100:.0f} point of the best, at the highest speed: **{balanced.cell}**, "
        f"{balanced.get('docs_per_sec'):.3f} docs/s, ROUGE-1 {balanced.get('rouge1'):.4f}.",
    ]
    gated = [r for r in usable if r.quality.get("gate") == "passed" or r.quality.get("is_reference")]
    if any(r.quality.get("gate") for r in usable):
        if gated:
            best_gated = max(gated, key=lambda r: r.get("docs_per_sec"))
            lines.append(
                f"- Fastest that passes the quality gate (ROUGE-1, -2 and -L at least 99% of the reference's, paired "
                f"95% intervals): "
                f"**{best_gated.cell}**, {best_gated.get('docs_per_sec'):.3f} docs/s."
            )
        else:
            lines.append("- No cell passes the quality gate (ROUGE-1, -2 and -L at least 99% of the reference's) "
                         "with confidence.")  # fmt: skip
    priced = [r for r in usable if r.price_per_hour]
    if priced:
        per_tokens = [(c, r) for r in priced if (c := cost_per_million_tokens(r, r.price_per_hour))]
        per_docs = [(c, r) for r in priced if (c := cost_per_100_docs(r, r.price_per_hour))]
        if per_tokens:
            cost, row = min(per_tokens, key=lambda x: x[0])
            lines.append(f"- Cheapest per 1M output tokens: **{row.cell}**, ${cost:.3g}.")
        if per_docs:
            cost, row = min(per_docs, key=lambda x: x[0])
            lines.append(f"- Cheapest per 100 documents: **{row.cell}**, ${cost:.3g}.")
        prices = sorted({r.price_per_hour for r in priced})
        price_text = f"${prices[0]:g}/hour" if len(prices) == 1 else "each GPU type's price per hour"
        lines.append(
            f"- Cost = {price_text} × generation time: per 1M output tokens = price × 10^6 / (3600 × output tokens/s); "
            "per 100 documents = price × 100 / (3600 × docs/s). Load time and idle time are not counted."
        )
    if price_per_kwh:
        per_energy = [(energy_cost_per_100_docs(r, price_per_kwh), r) for r in usable]
        per_energy = [(c, r) for c, r in per_energy if c is not None]
        if per_energy:
            cost, row = min(per_energy, key=lambda x: x[0])
            lines.append(f"- Least energy cost per 100 documents at ${price_per_kwh:g}/kWh: **{row.cell}**, ${cost:.3g} "
                         f"({row.get('energy_per_doc_j'):.3g} J per document).")  # fmt: skip
    return lines + floors
