"""A tune folder's report: what `llmopt tune` concluded (tune.json) and how (history.jsonl), as the text the command
prints, report.md and report.html. Read from the files only, like every report: `llmopt report TUNE_FOLDER` writes
the same pages again."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from llmopt.results import TUNE_HISTORY, TUNE_SUMMARY

HEAD = ["configuration", "quality mode", "verdict", "throughput at the SLO", "cost", "users at the SLO",
        "p95 TTFT s", "KL mean", "top-1", "gate", "quality decided by", "TPOT floor ms", "TPOT ms at 1 user",
        "x floor", "memory floor GiB", "memory GiB"]  # fmt: skip


def is_tune(folder: Path) -> bool:
    return (folder / TUNE_SUMMARY).is_file()


def load(folder: Path) -> dict[str, Any]:
    return json.loads((folder / TUNE_SUMMARY).read_text(encoding="utf-8"))


def _f(value: Any, spec: str = ".3g") -> str:
    return "" if value is None else format(value, spec)


def _gib(value: Any) -> str:
    return "" if value is None else f"{value / 2**30:.2f}"


def verdict_of(row: dict[str, Any], summary: dict[str, Any]) -> str:
    winner = (summary.get("winner") or {}).get("key")
    if row["key"] == winner:
        return "winner"
    if row["key"] in {t["key"] for t in summary.get("ties") or []}:
        return "tied (within noise; the simpler won)"
    return f"rejected: {row['rejected']}" if row.get("rejected") else "kept"


def configurations_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Every configuration with its prediction beside its measurement (the estimate's error as 'x floor')."""
    settings = summary["settings"]
    online = settings["objective"] == "online"
    head = list(HEAD) if online else [h if h != "throughput at the SLO" else "docs/s" for h in HEAD]
    if not online:
        head = [h for h in head if h not in ("users at the SLO", "p95 TTFT s", "TPOT ms at 1 user", "x floor")]
    rows = []
    for row in sorted(summary.get("points") or [], key=lambda r: (r.get("rejected") is not None, -(r.get("throughput") or 0))):
        figures = row.get("figures") or {}
        est, speed = figures.get("estimate") or {}, figures.get("speed") or {}
        floor, measured = est.get("tpot_floor_ms"), speed.get("tpot_ms_c1_p50")
        cells = {
            "configuration": row["key"], "quality mode": row["quality_mode"], "verdict": verdict_of(row, summary),
            "throughput at the SLO": _f(row.get("throughput")), "docs/s": _f(row.get("throughput")),
            "cost": _f(row.get("cost")), "users at the SLO": _f(speed.get("capacity"), "g"),
            "p95 TTFT s": _f(speed.get("ttft_p95_s")), "KL mean": _f(row.get("kl_mean"), ".4g"),
            "top-1": _f(row.get("top1_agreement"), ".3f"), "gate": row.get("gate") or "",
            "quality decided by": (row.get("quality_decided_by") or "").split(" (")[0],
            "TPOT floor ms": _f(floor), "TPOT ms at 1 user": _f(measured),
            "x floor": _f(measured / floor if measured and floor else None),
            "memory floor GiB": _gib(est.get("memory_bytes")), "memory GiB": _gib(row.get("memory_bytes")),
        }  # fmt: skip
        rows.append([cells[h] for h in head])
    return head, rows


def rejections_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [[r["key"], r["bound"] or "", r["detail"] or ""] for r in summary.get("rejected") or []]
    return ["configuration", "bound by", "the figure"], rows


def headline(summary: dict[str, Any]) -> list[str]:
    """The answer in a few lines: the winner and why, its validation, how to run it."""
    s = summary["settings"]
    lines = []
    win = summary.get("winner")
    if win is None:
        lines.append(f"**No configuration meets every constraint.** {summary.get('verdict', '')}")
        return lines
    unit = win["throughput_unit"]
    cost = f", {win['cost']:.3g} {win['cost_unit']}" if win.get("cost") else ""
    speed = win.get("figures", {}).get("speed", {})
    load = f" at {speed['capacity']:g} concurrent users" if speed.get("capacity") else ""
    if speed.get("capacity") and speed.get("capacity") >= s.get("search_max", float("inf")):
        load += " (the most tried, --search-max: it may hold more)"
    lines.append(f"**Winner: {win['key']}**: {_f(win['throughput'])} {unit}{load}{cost}.")
    quality = f"KL {_f(win.get('kl_mean'), '.4g')}, top-1 {_f(win.get('top1_agreement'), '.3f')}"
    lines.append(f"Quality ({s['reference']} {s['reference_dtype']} as reference): {quality}; gate "
                 f"{win.get('gate') or 'not run'}; decided by {win.get('quality_decided_by') or 'n/a'}.")  # fmt: skip
    if summary.get("ties"):
        lines.append("Tied within noise (" + f"{summary.get('tie_noise', 0):.0%}" + "), the simpler engine chosen: "
                     + ", ".join(t["key"] for t in summary["ties"]) + ".")  # fmt: skip
    val = summary.get("validation")
    for earlier in (summary.get("validation_attempts") or [])[:-1]:
        seed = (earlier.get("figures") or {}).get("seed")
        lines.append(f"Validation with a fresh seed ({seed}): NOT confirmed: {earlier.get('detail')}; one load lower:")
    if val:
        state = "confirmed" if val.get("passed") else "NOT confirmed"
        lines.append(f"Validation with a fresh seed ({(val.get('figures') or {}).get('seed')}): {state}: "
                     f"{val.get('detail')}.")  # fmt: skip
    held = summary.get("confirmed")
    if held:
        cost = f", {held['cost']:.3g} {win['cost_unit']}" if held.get("cost") else ""
        lines.append(f"Confirmed: {_f(held['output_tokens_per_s'])} {unit} at {held['users']:g} users{cost}; the lines "
                     "below run that load.")  # fmt: skip
        if held.get("ahead"):
            lines.append("At that figure these measured more in the search, so the ranking is in doubt (run again "
                         "with more --rung-requests): " + ", ".join(held["ahead"]) + ".")  # fmt: skip
    f = (val or {}).get("figures") or {}
    if f.get("quality_goodput_requests_per_s") is not None:
        lines.append(
            f"Goodput there: {f['goodput_requests_per_s']:.2f} requests/s met the SLO ({f['good_share']:.0%}); "
            f"quality-aware goodput {f['quality_goodput_requests_per_s']:.2f}/s ({f['quality_good_share']:.0%}): "
            f"those whose answer also agrees with the reference's (ROUGE-L at least {s['quality_floor']:g})."
        )
    return lines


def markdown(summary: dict[str, Any], folder: Path | None = None) -> str:
    s = summary["settings"]
    out = [f"# llmopt tune: {s['model']}", ""]
    what = f"objective **{s['objective']}**"
    if s.get("slo"):
        what += (
            f", SLO `{s['slo']}` (verdicts at {s['confidence']:.0%} confidence)" if s.get("confidence") else f", SLO `{s['slo']}`"
        )
    out += [f"{what}; optimize {s['optimize']}; gate {s['gate']:.0%} of {s['reference']} {s['reference_dtype']}'s "
            f"ROUGE; drift limits KL ≤ {s['max_kl']:g}, top-1 ≥ {s['min_top1']:g}; {s['dataset']}, prompt "
            f"{s['prompt']}, {s['max_new_tokens']} new tokens; search {s['search']}"
            + (f" (eta {s['eta']})" if s["search"] == "halving" else "") + "; status "
            f"{summary.get('status')}, {summary.get('elapsed_s', 0) / 60:.1f} min.", ""]  # fmt: skip
    host = summary.get("host")
    if host:
        out += [f"Host: {host['label']}; memory {host['memory_bytes'] / 2**30:.1f} GiB; bandwidth "
                f"{host['bandwidth_gb_s']:.1f} GB/s ({host['source']}).", ""]  # fmt: skip
    out += [*headline(summary), ""]
    rep = summary.get("reproduce") or {}
    if rep:
        out += ["Reproduce:", "", "```"]
        labels = {"loadtest": "# server and load together", "server": "# or the server alone ...",
                  "loadtest_endpoint": "# ... and the load test against it", "run": "# offline"}  # fmt: skip
        for key, line in rep.items():
            out += [labels.get(key, f"# {key}"), line]
        out += ["```", ""]
    fronts = summary.get("fronts") or {}
    if fronts:
        out += [f"Pareto front, cost against drift (KL): {', '.join(fronts.get('cost_vs_kl') or []) or 'none'}.",
                f"Pareto front, cost against latency ({'p95 TTFT' if s['objective'] == 'online' else 's/doc'}): "
                f"{', '.join(fronts.get('cost_vs_latency') or []) or 'none'}.", ""]  # fmt: skip
    for engine, why in ((summary.get("space") or {}).get("unavailable") or {}).items():
        out.append(f"- not searched: {engine}: {why}")
    out += ["", "## Configurations", "", _md_table(configurations_table(summary)), "",
            "TPOT floor: one decode step at batch 1 reading every weight once at the host's bandwidth (a lower bound); "
            "x floor: the TPOT measured at one user over it, the estimate's error.", ""]  # fmt: skip
    head, rows = rejections_table(summary)
    if rows:
        out += ["## Rejected, and the constraint that bound each", "", _md_table((head, rows)), ""]
    if folder is not None and (folder / TUNE_HISTORY).is_file():
        lines = (folder / TUNE_HISTORY).read_text(encoding="utf-8").count("\n")
        out += [f"Every trial, in order: `{TUNE_HISTORY}` ({lines} lines)."]
    return "\n".join(out) + "\n"


def _md_table(table: tuple[list[str], list[list[str]]]) -> str:
    head, rows = table
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def terminal(summary: dict[str, Any]) -> str:
    """What `llmopt tune` prints at its end."""
    lines = [line.replace("**", "") for line in headline(summary)]
    for key, line in (summary.get("reproduce") or {}).items():
        lines.append(f"  {key}: {line}")
    fronts = summary.get("fronts") or {}
    if fronts:
        lines.append(f"Pareto front, cost against drift: {', '.join(fronts.get('cost_vs_kl') or []) or 'none'}")
        lines.append(f"Pareto front, cost against latency: {', '.join(fronts.get('cost_vs_latency') or []) or 'none'}")
    for r in summary.get("rejected") or []:
        lines.append(f"  rejected {r['key']}: {r['bound']}: {r['detail']}")
    return "\n".join(lines)


def write(folder: Path) -> Path:
    """report.md (and report.html where plotly is installed) of a tune folder."""
    summary = load(folder)
    path = folder / "report.md"
    path.write_text(markdown(summary, folder), encoding="utf-8")
    try:
        from llmopt.reports import html

        html.write_tune(folder, summary, configurations_table(summary), rejections_table(summary), headline(summary))
    except ImportError as exc:  # no plotly or jinja2 here: report.md stands alone, and no older page misleads
        (folder / "report.html").unlink(missing_ok=True)
        print(f"llmopt: left out: report.html ({exc.name or exc}: pip install plotly jinja2)", file=sys.stderr)
    return path
