"""Published figures llmopt reproduces, as shipped CSV files with their sources."""

from __future__ import annotations

import csv
from pathlib import Path

from llmopt.errors import UsageError

# The repository's results/published/ folder (its README names every source).
PUBLISHED_DIR = Path(__file__).resolve().parents[2] / "results" / "published"
PUBLISHED = {
    "lcary-2024": (
        "lcary_2024_wikilingua_llama2_7b.csv",
        'Luc Cary, "Llama2 7b Benchmarks" (2024-01-17), lcary/ai-summarization-benchmarks, data/results_*.json (CC0)',
    )
}


def published_rows(table: str) -> list[dict[str, str]]:
    name, _ = PUBLISHED[table]
    path = PUBLISHED_DIR / name
    if not path.is_file():
        raise UsageError(f"published table {str(path)!r} is missing")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def published_table(table: str) -> str:
    """A published table as aligned text, with its source."""
    name, source = PUBLISHED[table]
    rows = published_rows(table)
    cols = ["gpu", "strategy", "batch_size", "n_docs", "docs_per_sec", "total_time_s", "rouge1", "headline", "note"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = [f"{table}: {source}", f"(file results/published/{name})", ""]
    lines.append("  ".join(c.ljust(widths[c]) for c in cols))
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)
