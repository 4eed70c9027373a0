"""Published figures llmopt reproduces, as shipped CSV files with their sources."""

from __future__ import annotations

import csv

from llmopt.errors import UsageError
from llmopt.paths import DATA_DIR

# Shipped inside the package, so an installed llmopt finds them; their README names every source.
PUBLISHED_DIR = DATA_DIR / "published"
PUBLISHED = {
    "lcary-2024": (
        "lcary_2024_wikilingua_llama2_7b.csv",
        'Luc Cary, "Llama2 7b Benchmarks" (2024-01-17), lcary/ai-summarization-benchmarks, data/results_*.json (CC0)',
    ),
    "lcary-2024-oom": ("lcary_2024_oom.csv", "the failure table of the same report (Luc Cary, 2024)"),
    "hf-sagemaker-2023": (
        "hf_sagemaker_llama2_2023.csv",
        'Hugging Face blog, "Llama 2 on Amazon SageMaker a Benchmark" (2023), TGI 1.0.3, recommendation tables',
    ),
    "fmbench-2024": (
        "fmbench_2024_summary.csv",
        "FMBench reports (aws-samples/foundation-model-benchmarking-tool): Llama-2-13B and Llama-3-8B, per payload bin",
    ),
    "fmbench-2024-recommendations": (
        "fmbench_2024_recommendations.csv",
        "FMBench reports: the recommended concurrency per instance and payload bin (mean latency within 2 s)",
    ),
}


def published_rows(table: str) -> list[dict[str, str]]:
    name, _ = PUBLISHED[table]
    path = PUBLISHED_DIR / name
    if not path.is_file():
        raise UsageError(f"published table {str(path)!r} is missing")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def published_table(table: str) -> str:
    """A published table as aligned text, with its source: every column of the file."""
    name, source = PUBLISHED[table]
    rows = published_rows(table)
    cols = list(rows[0]) if rows else []
    widths = {c: max(len(c), *(len(r[c] or "") for r in rows)) for c in cols}
    lines = [f"{table}: {source}", f"(file llmopt/data/published/{name})", ""]
    lines.append("  ".join(c.ljust(widths[c]) for c in cols))
    lines += ["  ".join((r[c] or "").ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)
