"""A regression table against a baseline's results: the same cells on another machine, another version, another day.

Rows are matched by cell name (or strategy, batch size and model). For each: the docs/s ratio, flagged where it lies
beyond the noise that repeated timed loops measured (both runs need `--repeats`; without them the noise is unknown),
and the ROUGE-1 difference on the documents both scored, with its paired interval, flagged where it excludes zero.
"""

from __future__ import annotations

from llmopt.quality import paired
from llmopt.reports.rows import Row
from llmopt.reports.tables import Table, markdown


def _key(row: Row) -> tuple[str, ...]:
    return (row.cell.rpartition("/")[2],)


def _alternate_key(row: Row) -> tuple[str, ...]:
    return (row.strategy, str(row.batch_size), str(row.get("model")))


def match(rows: list[Row], baseline: list[Row]) -> list[tuple[Row, Row]]:
    by_name = {_key(b): b for b in baseline}
    by_shape = {_alternate_key(b): b for b in baseline}
    pairs = []
    for r in rows:
        other = by_name.get(_key(r)) or by_shape.get(_alternate_key(r))
        if other is not None:
            pairs.append((r, other))
    return pairs


def speed_verdict(row: Row, base: Row) -> str:
    """Whether a docs/s change is beyond the spread of repeated loops, by the relative IQR of the noisier of the two."""
    spreads = [x for x in (row.get("docs_per_sec_riqr"), base.get("docs_per_sec_riqr")) if x is not None]
    if len(spreads) < 2:
        return "noise unknown (run both with --repeats)"
    ratio = row.get("docs_per_sec") / base.get("docs_per_sec")
    return "beyond noise" if abs(ratio - 1) > max(spreads) else "within noise"


def regression_table(rows: list[Row], baseline: list[Row]) -> str:
    table = regression_cells(rows, baseline)
    return "No cell of these results matches a cell of the baseline." if table is None else markdown(table)


def regression_cells(rows: list[Row], baseline: list[Row]) -> Table | None:
    pairs = match(rows, baseline)
    if not pairs:
        return None
    head = ["cell", "hardware", "baseline hardware", "docs/s", "baseline docs/s", "ratio", "speed", "ΔROUGE-1 [95% CI]"]
    head += ["quality", "KL mean (baseline)"]
    lines = []
    for r, b in pairs:
        speed, base_speed = r.get("docs_per_sec"), b.get("docs_per_sec")
        ratio = speed / base_speed if speed and base_speed else None
        verdict = speed_verdict(r, b) if ratio is not None else "–"
        mine, theirs = r.completed_records(), b.completed_records()
        shared = [d for d in theirs if d in mine and mine[d].get("rouge1") is not None and theirs[d].get("rouge1") is not None]
        delta = paired.paired_delta([mine[d]["rouge1"] for d in shared], [theirs[d]["rouge1"] for d in shared])
        quality = "–" if delta is None else ("beyond noise" if delta.low > 0 or delta.high < 0 else "within noise")
        drift = (r.quality.get("drift") or {}).get("kl_mean"), (b.quality.get("drift") or {}).get("kl_mean")
        cells = [r.cell, r.hardware, b.hardware, _f(speed), _f(base_speed), "–" if ratio is None else f"{ratio:.2f}×", verdict]
        cells += ["–" if delta is None else f"{delta.delta:+.4f} [{delta.low:+.4f}, {delta.high:+.4f}]", quality]
        cells += [f"{_f(drift[0], '.4g')} ({_f(drift[1], '.4g')})"]
        lines.append(cells)
    return head, lines


def _f(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)
