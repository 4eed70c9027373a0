"""The parts of a load test's report.md that come from watching it: the server's metrics per level (and a plot of
its gauges over time), the client's self-check, and quality under load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLIENT_MARK = "†"  # beside a level whose client was the bottleneck
FOLDER_PREFIX = {"concurrency": "c", "rate": "r", "trace": "x"}  # a level's folder: levels/<bin>/c4, r2.5, x1


def _f(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def level_label(level: dict[str, Any], mode: str) -> str:
    return f"{level['bin']} {mode} {level[mode]:g}"


def flat(level: dict[str, Any]) -> dict[str, Any]:
    """The observed figures of a level as summary.csv columns."""
    row: dict[str, Any] = {}
    server = level.get("server_metrics") or {}
    for name, g in (server.get("gauges") or {}).items():
        row[f"server_{name}_mean"], row[f"server_{name}_max"] = g["mean"], g["max"]
    for name, delta in (server.get("counters") or {}).items():
        row[f"server_{name}"] = delta
    row["server_prefix_cache_hit_rate"] = server.get("prefix_cache_hit_rate")
    client = level.get("client") or {}
    if client:
        row["send_lag_ms_p99"] = client["send_lag_ms"]["p99"]
        row["loop_lag_ms_p99"] = client["loop_lag_ms"]["p99"]
        row["client_cpu_cores"] = client["client_cpu_cores"]
        row["client_bound"] = client["client_bound"]
    row["saturated"] = level.get("saturated")
    quality = level.get("quality") or {}
    for k in ("rouge1", "rouge2", "rougeL"):
        if k in quality:
            row[f"{k}_mean"] = quality[k]["mean"]
    vs = quality.get("vs_reference") or {}
    if vs:
        row["agreement_with_reference"] = vs["agreement"]
        for k in ("rouge1", "rouge2", "rougeL"):
            if vs.get(f"{k}_delta"):
                row[f"{k}_delta_vs_reference"] = vs[f"{k}_delta"]["delta"]
    return row


def sections(out: Path, summary: dict[str, Any], plots: bool) -> list[str]:
    levels, mode = summary["levels"], summary["load"]["mode"]
    if not levels or "client" not in levels[0]:
        return []
    lines = ["", "## Server metrics (scraped from /metrics)", ""]
    if any((lv.get("server_metrics") or {}).get("scrapes") for lv in levels):
        lines += [
            "| level | scrapes | running mean / max | waiting mean / max | KV cache mean / max | preemptions "
            "| prefix-cache hit rate | prompt / generated tokens |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for lv in levels:
            sm = lv.get("server_metrics") or {}
            g, c = sm.get("gauges") or {}, sm.get("counters") or {}

            def gauge(name: str, spec: str = ".1f", g: dict = g) -> str:
                return f"{_f(g[name]['mean'], spec)} / {_f(g[name]['max'], spec)}" if name in g else "–"

            lines.append(
                f"| {level_label(lv, mode)} | {sm.get('scrapes', 0)} | {gauge('running_requests')} | {gauge('waiting_requests')}"
                f" | {gauge('kv_cache_usage', '.1%')} | {_f(c.get('preemptions'), '.0f')}"
                f" | {_f(sm.get('prefix_cache_hit_rate'), '.1%')}"
                f" | {_f(c.get('prompt_tokens'), '.0f')} / {_f(c.get('generation_tokens'), '.0f')} |"
            )
    notes = summary.get("observing", {}).get("metrics_notes") or []
    lines += [f"\nNote: {n}." for n in notes] or (
        [] if summary.get("observing", {}).get("server_metrics", True) else ["Not scraped."]
    )
    lines += [
        "",
        "## The load generator's self-check",
        "",
        "| level | send lag p50 / p99 / max ms | event-loop lag p50 / p99 / max ms | client CPU (cores) | verdict |",
        "|---|---|---|---|---|",
    ]
    for lv in levels:
        cl = lv["client"]
        s, lp = cl["send_lag_ms"], cl["loop_lag_ms"]
        verdict = f"{CLIENT_MARK} client-bound: {cl['client_bound']}" if cl["client_bound"] else "ok"
        if lv.get("saturated"):
            verdict += f"; stopped: {lv['saturated']}"
        lines.append(
            f"| {level_label(lv, mode)} | {_f(s['p50'], '.2f')} / {_f(s['p99'], '.2f')} / {_f(s['max'], '.2f')}"
            f" | {_f(lp['p50'], '.2f')} / {_f(lp['p99'], '.2f')} / {_f(lp['max'], '.2f')} | {_f(cl['client_cpu_cores'], '.2f')}"
            f" | {verdict} |"
        )
    quality_rows = [lv for lv in levels if lv.get("quality")]
    if quality_rows:
        lines += ["", "## Quality under load", ""]
        with_ref = any((lv["quality"] or {}).get("vs_reference") for lv in quality_rows)
        head = "| level | answers | ROUGE-1 | ROUGE-2 | ROUGE-L |"
        lines += [head + (" agreement with offline | ΔROUGE-1 [95% CI] | ΔROUGE-L [95% CI] |" if with_ref else "")]
        lines += ["|---" * (head.count("|") - 1 + (3 if with_ref else 0)) + "|"]
        for lv in quality_rows:
            q = lv["quality"]
            row = f"| {level_label(lv, mode)} | {q['answers']} | " + " | ".join(
                _f((q.get(k) or {}).get("mean"), ".4f") for k in ("rouge1", "rouge2", "rougeL")
            )
            if with_ref:
                vs = q.get("vs_reference") or {}

                def delta(k: str, vs: dict = vs) -> str:
                    d = vs.get(f"{k}_delta")
                    return f"{d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d else "–"

                row += f" | {_f(vs.get('agreement'), '.1%')} | {delta('rouge1')} | {delta('rougeL')}"
            lines.append(row + " |")
        for lv in quality_rows:
            q = lv["quality"]
            for t in q.get("by_turn") or []:
                r1, rl = (_f((t.get(k) or {}).get("mean"), ".4f") for k in ("rouge1", "rougeL"))
                lines.append(f"\n{level_label(lv, mode)}, turn {t['turn']}: {t['answers']} answers, ROUGE-1 {r1}, ROUGE-L {rl}.")
            for note in q.get("notes") or []:
                lines.append(f"\nNote ({level_label(lv, mode)}): {note}.")
        quality = summary.get("quality") or {}
        cons = quality.get("consistency")
        if cons:
            if cons["differing"]:
                shown = ", ".join(cons["differing"][:10]) + (" …" if len(cons["differing"]) > 10 else "")
                lines.append(
                    f"\nGreedy answers to the same exact input differ for {len(cons['differing'])} of {cons['payloads']} "
                    f"inputs ({shown}): batching under load changed what users got."
                )
            else:
                lines.append(f"\nEvery one of {cons['payloads']} distinct inputs got the same greedy answer each time.")
        for note in quality.get("reference_notes") or []:
            lines.append(f"\nNote: {note}.")
    if plots:
        path = plot_gauges(out, levels, mode)
        if path is not None:
            lines += ["", f"![{path.stem}](plots/{path.name})"]
    return lines


def plot_gauges(out: Path, levels: list[dict[str, Any]], mode: str) -> Path | None:
    """Running and waiting requests and KV-cache usage over each level's time, from its server_metrics.jsonl."""
    from llmopt.serving import scrape

    series = []
    for lv in levels:
        path = out / "levels" / lv["bin"] / f"{FOLDER_PREFIX[mode]}{lv[mode]:g}" / "server_metrics.jsonl"
        rows = (
            [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []
        )
        if rows:
            series.append((level_label(lv, mode), rows))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("running_requests", "waiting_requests", "kv_cache_usage")
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 7), sharex=True)
    for ax, name in zip(axes, names, strict=True):
        for label, rows in series:
            points = [(r["t_s"], v) for r in rows if (v := scrape.pick(r, scrape.GAUGES[name])) is not None]
            if points:
                ax.plot([t for t, _ in points], [v for _, v in points], "-", label=label)
        ax.set(ylabel=name.replace("_", " "))
    axes[-1].set(xlabel="seconds into the level")
    axes[0].set_title("Server gauges during each level")
    axes[0].legend(fontsize=6)
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(folder / "server_metrics.png", dpi=110)
    plt.close(fig)
    return folder / "server_metrics.png"
