"""What the modes wrote: the first documents' reference summary and each row's summary of them, side by side, so
that a reader sees in words what a ROUGE difference or a KL of 0.05 means."""

from __future__ import annotations

from llmopt.reports.rows import Row

DOCUMENTS = 2
WIDTH = 400  # characters of a summary shown; the full text is in the run's records.jsonl


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"


def _cell(text: str) -> str:
    return _short(text).replace("|", "\\|") or "(empty)"


def examples_section(rows: list[Row], documents: int = DOCUMENTS) -> str:
    """Markdown: per document, the human reference and every row's summary; empty when no row has summaries."""
    outputs: list[tuple[Row, dict[str, dict]]] = []
    for r in rows:
        if r.get("n_completed") and (r.folder / "records.jsonl").is_file():
            outputs.append((r, r.completed_records()))
    if not outputs:
        return ""
    order: list[str] = []
    for _, records in outputs:  # documents in the order the runs met them, those most rows finished first
        for doc_id, _ in sorted(records.items(), key=lambda kv: kv[1].get("index", 0)):
            if doc_id not in order:
                order.append(doc_id)
    shown = sorted(order, key=lambda d: -sum(d in records for _, records in outputs))[:documents]
    parts = []
    for doc_id in shown:
        reference = next(records[doc_id].get("reference", "") for _, records in outputs if doc_id in records)
        lines = [f"### Document {doc_id}", "", "| who | summary |", "|---|---|", f"| human reference | {_cell(reference)} |"]
        for r, records in outputs:
            if doc_id in records:
                lines.append(f"| {r.cell} | {_cell(records[doc_id].get('prediction') or '')} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
