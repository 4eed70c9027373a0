"""A load test's plan and its run: payloads binned by prompt length, every level of every bin in turn, stopped
early where a bin is clearly broken. Each level's requests are written as they finish; its figures come back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmopt.documents import workloads
from llmopt.errors import UsageError
from llmopt.serving import loadgen, stats
from llmopt.serving.loadgen import Load, Payload, Payloads
from llmopt.stopping import StopRequest

FMBENCH_BINS = "1-500,500-1000,1000-2000,2000-3000,3000-3840"


@dataclass(frozen=True)
class LoadPlan:
    """How hard to push, and what counts as good enough."""

    mode: str  # "concurrency" (closed loop), "rate" (open loop) or "trace" (open loop on a trace's timestamps)
    values: list[float]  # the fixed levels (a trace: its --time-scale); a search's start
    requests: int | None  # measured requests per level (conversations with turns > 1); None with a duration
    duration_s: float | None
    warmup_requests: int | None  # None: one per user, or 2 at a rate, 0 in a trace
    max_tokens: int
    ignore_eos: bool
    seed: int
    max_inflight: int
    latency_budget_s: float
    error_budget: float
    price_per_hour: float | None
    slo: stats.Slo | None = None
    search: bool = False  # bracket by doubling from values[0], then bisect
    search_max: float = 1024
    search_tolerance: float = 0.1  # stop bisecting when the bracket is this fraction of its low end (or 1 user)
    good_share_target: float | None = None  # a search point also needs this share of good requests
    burstiness: float = 1.0  # gamma shape of the gaps at a rate; 1 is Poisson
    ramp_up_s: float = 0.0
    turns: int = 1
    think_time_s: float = 0.0
    grace_s: float = 30.0
    shared_prefix: bool = False  # prompts share prefixes on purpose (prefixes, turns, a trace): cached tokens expected
    trace: tuple[workloads.TraceRow, ...] = ()
    collect_text: bool = False  # keep each answer's text on its result, for a hook that scores it (quality under load)
    requests_per_user: int | None = None  # a closed-loop level measures at least this many requests per user
    warmup_s: float = 0.0  # steady-state window: requests sent this soon after a level's first send are not counted
    cooldown_s: float = 0.0  # nor those ending this close to its last end


class LevelHooks:
    """What runs beside each level (server metrics, quality under load): `start` just before its first request,
    `finish` after its last, with its results and figures to add to. The default does nothing."""

    collect_text = False  # keep every answer's text (quality under load)

    def start(self, level: LevelRun) -> None:
        pass

    def on_result(self, result: Any) -> None:
        """Each request as it finishes (written already)."""

    def halted(self) -> str | None:
        """Why the level must end early (over-saturation), or None."""
        return None

    async def around(self, work: Any) -> Any:
        """The level's requests, awaited inside the level's event loop (where a probe of the loop may run beside)."""
        return await work

    def finish(self, level: LevelRun, results: list[Any], figures: dict[str, Any]) -> None:
        pass


@dataclass
class LevelRun:
    """One level as it runs: which bin and load, where its requests go."""

    bin: str
    mode: str
    value: float
    folder: Path
    target: Any


@dataclass
class Outcome:
    """What a test ended with besides its levels: the server gone (when, how, at which level), warnings, searches."""

    server_gone: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    searches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.server_gone is None


def parse_bins(text: str) -> list[tuple[str, int, int]]:
    """'1-500,500-1000' -> bins holding prompts of lo <= tokens < hi (the last bin includes hi)."""
    bins = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not (sep and lo.isdigit() and hi.isdigit() and int(lo) < int(hi)):
            raise UsageError(f"--bins: {part!r} is not a range like 500-1000")
        bins.append((part.strip(), int(lo), int(hi)))
    return bins


def load_tokenizer(name: str | None) -> Any:
    """The tokenizer that counts prompt tokens (config and tokenizer files only, never the weights)."""
    if not name:
        return None
    from transformers import AutoTokenizer

    from llmopt.models import resolve

    try:
        return AutoTokenizer.from_pretrained(resolve.fetch(name, weights="random").path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a tokenizer for {name!r}: {str(exc).splitlines()[0]}") from None


def build_payloads(dataset: str, prompt: str, synthetic_tokens: int | None, bins: str | None, tokenizer: Any,
                   seed: int = 0, shared_prefix_tokens: int = 0, prefix_groups: int = 1,
                   trace: Sequence[workloads.TraceRow] = ()) -> dict[str, Payloads]:  # fmt: skip
    """Payloads grouped into prompt-length bins (one bin for synthetic prompts, a trace, or without a tokenizer).
    Synthetic prompts are made per request, each unique; a dataset's are sent each once before any repeats."""
    from llmopt.documents.datasets import load_dataset
    from llmopt.documents.prompts import PROMPTS

    if (synthetic_tokens or shared_prefix_tokens or trace) and tokenizer is None:
        raise UsageError("--synthetic-tokens, --shared-prefix-tokens and --trace need a tokenizer: pass --tokenizer or --model")
    text = workloads.RandomText(tokenizer, seed) if tokenizer is not None else None
    prefixes = []
    if shared_prefix_tokens and text is not None:
        prefixes = [text.text(shared_prefix_tokens, f"prefix{g}") + "\n" for g in range(prefix_groups)]
    if trace and text is not None:
        blocks: dict[int, str] = {}
        rows = [Payload(f"trace{j:05d}", workloads.trace_prompt(text, row, j, blocks), row.input_length, row.output_length)
                for j, row in enumerate(trace)]  # fmt: skip
        return {"trace": Payloads("trace", rows)}
    if synthetic_tokens and text is not None:
        n = synthetic_tokens

        def make(k: int) -> Payload:
            return Payload(f"synthetic{k:05d}", text.text(n, k), n)

        return {f"synthetic-{n}": Payloads(f"synthetic-{n}", make=make, prefixes=prefixes)}
    template = PROMPTS[prompt]
    items = []
    for doc in load_dataset(dataset):
        body = template(doc.document)
        n_tokens = len(tokenizer(body)["input_ids"]) if tokenizer is not None else None
        items.append(Payload(doc.id, body, n_tokens, document=doc.id))
    if tokenizer is None:
        return {"all": Payloads("all", items, prefixes=prefixes)}
    grouped: dict[str, Payloads] = {}
    ranges = parse_bins(bins or FMBENCH_BINS)
    for name, lo, hi in ranges:
        last = name == ranges[-1][0]
        members = [it for it in items if lo <= it.prompt_tokens < hi or (last and it.prompt_tokens == hi)]
        if members:
            grouped[name] = Payloads(name, members, prefixes=prefixes)
    return grouped


def served_model(endpoint: str, api_key: str | None) -> str:
    """The first model the server lists, for the requests' `model` field."""
    import urllib.error
    import urllib.request

    root = endpoint.rstrip("/")
    root = root if root.endswith("/v1") else root + "/v1"
    request = urllib.request.Request(root + "/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            listed = json.load(response).get("data") or []
    except urllib.error.HTTPError as exc:
        raise UsageError(f"{root}/models answered HTTP {exc.code}: pass --served-model NAME") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UsageError(f"cannot reach {root}/models ({exc}): is the server up? (or pass --served-model)") from None
    if not listed:
        raise UsageError(f"{root}/models lists no model: pass --served-model NAME")
    return listed[0]["id"]


def run_level(plan: LoadPlan, target: Any, payloads: Payloads, value: float, out: Path, stop: StopRequest,
              hooks: LevelHooks) -> tuple[dict[str, Any], loadgen.ServerGone | None]:  # fmt: skip
    """Run one level and return its figures (and the server's going away, if it did)."""
    mode = plan.mode
    default_warmup = {"concurrency": int(value), "rate": 2, "trace": 0}[mode]
    warmup = plan.warmup_requests if plan.warmup_requests is not None else default_warmup
    requests = plan.requests
    if mode == "trace":
        available = max(0, len(plan.trace) - warmup)
        requests = available if requests is None else min(requests, available)
    elif requests is None and plan.duration_s is None:  # one pass of a dataset's prompts, warm-up included
        requests = max(1, len(payloads) - int(warmup))
    if mode == "concurrency" and requests is not None and plan.requests_per_user:
        # Fewer requests than users would measure a level whose users never all run at once: the first wave drains
        requests = max(requests, int(plan.requests_per_user * value))
    load = Load(requests, plan.duration_s, int(warmup), plan.max_tokens, plan.ignore_eos, plan.turns, plan.think_time_s,
                plan.grace_s, plan.collect_text or hooks.collect_text)  # fmt: skip
    name = {"concurrency": f"c{value:g}", "rate": f"r{value:g}", "trace": f"x{value:g}"}[mode]
    folder = out / "levels" / payloads.name / name
    folder.mkdir(parents=True, exist_ok=True)
    run = LevelRun(payloads.name, mode, value, folder, target)
    repeated_before = payloads.repeated
    with open(folder / "requests.jsonl", "w", encoding="utf-8") as sink:

        def record(result: Any) -> None:
            sink.write(json.dumps(result.as_record()) + "\n")
            sink.flush()  # each line as it finishes: an interrupted level keeps what it sent
            hooks.on_result(result)

        def halt() -> str | None:
            return "interrupted" if stop.requested else hooks.halted()

        def interrupted() -> bool:
            return stop.requested

        ahead = 0  # prompts to keep ready from a thread while the level runs (its need not known beforehand)
        if mode == "concurrency":
            if load.requests is not None:
                payloads.prepare((load.warmup + load.requests) * load.turns, halt)
            else:
                ahead = max(64, 4 * int(value)) * load.turns
            coro = loadgen.closed_loop(target, payloads, int(value), load, record, halt, interrupted)
        else:
            if mode == "rate":
                payloads.prepare(arrivals_due(plan, value, load) * load.turns, halt)
                arrivals = loadgen.gamma_arrivals(value, plan.burstiness, plan.ramp_up_s, plan.seed)

                def pick(j: int) -> Payloads:
                    return payloads
            else:
                t0 = plan.trace[0].timestamp_ms
                arrivals = iter([(row.timestamp_ms - t0) / 1000 / value for row in plan.trace])

                def pick(j: int) -> Payloads:
                    return Payloads(payloads.name, [payloads.items[j]])

            coro = loadgen.open_loop(target, pick, arrivals, load, plan.max_inflight, record, halt, interrupted)
        late_before = payloads.made_late
        with payloads.making_ahead(ahead):
            hooks.start(run)
            results, gone = asyncio.run(hooks.around(coro))
    figures = stats.level_stats(results, loadgen.measured_window(results), plan.price_per_hour, plan.slo,
                                plan.warmup_s, plan.cooldown_s, plan.ignore_eos)  # fmt: skip
    level = {"bin": payloads.name, "concurrency": value if mode == "concurrency" else None,
             "rate": value if mode == "rate" else None, **({"trace": value} if mode == "trace" else {}), **figures}  # fmt: skip
    level["interrupted"] = stop.requested  # its figures cover the requests answered before the interrupt
    notes = []
    level["prompts_made_late"] = payloads.made_late - late_before if payloads.make is not None else None
    if level["prompts_made_late"]:
        notes.append(f"{level['prompts_made_late']} requests waited for their synthetic prompt to be made (the client "
                     "made prompts slower than the level used them: that wait is in their send lag)")  # fmt: skip
    if level["short_answers"]:
        notes.append(f"the server at {target.url} (model {target.model}) ignored --ignore-eos: {level['short_answers']} "
                     f"of {level['short_answers_checked']} answers were shorter than the tokens asked; their output "
                     "throughput and TPOT are not those of the asked length")  # fmt: skip
    if (plan.warmup_s or plan.cooldown_s) and not level["requests"]:
        notes.append(f"the steady-state window (--warmup-s {plan.warmup_s:g}, --cooldown-s {plan.cooldown_s:g}) "
                     "left no request of this level to count")  # fmt: skip
    repeats = payloads.repeated - repeated_before
    level["payload_repeats"] = repeats
    if repeats:
        notes.append(f"the {len(payloads)} prompts of {payloads.name} ran out: {repeats} requests of this level repeat "
                     "a prompt already sent (a prefix-caching server may answer those from its cache)")  # fmt: skip
    if not plan.shared_prefix and (level["cached_share"] or 0) > 0:
        notes.append(f"the server answered {level['cached_share']:.1%} of the prompt tokens from its prefix cache, "
                     "though this test asked for no shared prefixes")  # fmt: skip
    level["warnings"] = notes
    if gone is not None:
        level["server_gone"] = vars(gone)
    hooks.finish(run, results, level)
    return level, gone


def arrivals_due(plan: LoadPlan, rate: float, load: Load) -> int:
    """How many arrivals an open loop at `rate` sends at most: its warm-up and request count, or with a duration
    every arrival up to it (the arrivals are seeded: the same ones the level will draw)."""
    if load.requests is not None:
        return load.warmup + load.requests
    assert load.duration_s is not None
    n = 0
    for j, t in enumerate(loadgen.gamma_arrivals(rate, plan.burstiness, plan.ramp_up_s, plan.seed)):
        if j >= load.warmup and t > load.duration_s:
            return n
        n += 1
    return n


def _gone_record(gone: loadgen.ServerGone, bin_name: str, mode: str, value: float) -> dict[str, Any]:
    return {"bin": bin_name, mode: value, **vars(gone)}


def run_levels(
    plan: LoadPlan,
    target: Any,
    bins: dict[str, Payloads],
    out: Path,
    levels: list[dict[str, Any]],
    stopped: list[dict[str, Any]],
    stop: StopRequest,
    say: Callable[[str], None],
    hooks: LevelHooks | None = None,
    outcome: Outcome | None = None,
) -> Outcome:
    """Run every level (or a search per bin), appending to `levels` as each finishes, so an interrupt or a server
    going away keeps the finished ones."""
    hooks = hooks or LevelHooks()
    outcome = outcome if outcome is not None else Outcome()
    mode = plan.mode
    for bin_name, payloads in bins.items():
        if plan.search:
            if outcome.server_gone or stop.requested:
                break
            outcome.searches.append(run_search(plan, target, payloads, out, levels, stop, say, hooks, outcome))
            continue
        broken = None
        for value in plan.values:
            if broken or stop.requested or outcome.server_gone:
                reason = "the server went away" if outcome.server_gone else broken or "interrupted"
                stopped.append({"bin": bin_name, mode: value, "reason": reason})
                continue
            level, gone = run_level(plan, target, payloads, value, out, stop, hooks)
            _keep(level, mode, levels, say, outcome)
            if gone is not None:
                outcome.server_gone = _gone_record(gone, bin_name, mode, value)
                say(f"the server went away {gone.at_s:.1f} s into {bin_name} {mode} {value:g} ({gone.utc}): {gone.how}")
                continue
            if plan.slo is not None:  # with --slo, a fixed level is judged as a search's is, and only by it
                reasons = stats.verdict(level, plan.slo, plan.error_budget, plan.good_share_target)
                level["verdict"] = {"passed": not reasons, "reasons": reasons}
                say(f"  {'pass' if not reasons else 'fail: ' + '; '.join(reasons)}")
            broken = f"over-saturated at {mode} {value:g}" if level.get("saturated") else None
            budget = None if plan.slo is not None else plan.latency_budget_s  # the SLO, not the default budget, judges
            broken = broken or stats.clearly_broken(level, budget, plan.error_budget)
            if broken:
                say(f"stopping the {bin_name} sweep: {broken}")
    return outcome


def _keep(level: dict[str, Any], mode: str, levels: list[dict[str, Any]], say: Callable[[str], None], outcome: Outcome) -> None:
    levels.append(level)
    say(level_line(level, mode))
    if level.get("interrupted"):
        say(f"interrupted: {level['bin']} {mode} {level[mode]:g} ended early; its figures, over the requests answered "
            "before, are kept and marked interrupted")  # fmt: skip
    for note in level["warnings"]:
        say(f"warning: {level['bin']} {mode} {level[mode]:g}: {note}")
        outcome.warnings.append(f"{level['bin']} {mode} {level[mode]:g}: {note}")


def run_search(plan: LoadPlan, target: Any, payloads: Payloads, out: Path, levels: list[dict[str, Any]],
               stop: StopRequest, say: Callable[[str], None], hooks: LevelHooks, outcome: Outcome) -> dict[str, Any]:  # fmt: skip
    """The most load that meets the SLOs: double from the start until a point fails (or the maximum passes), then
    bisect between the last pass and the first failure until the bracket is within the tolerance."""
    assert plan.slo is not None
    mode = plan.mode
    verdicts: dict[float, bool] = {}

    def test(value: float) -> bool | None:
        if stop.requested or outcome.server_gone:
            return None
        level, gone = run_level(plan, target, payloads, value, out, stop, hooks)
        assert plan.slo is not None
        if level["interrupted"]:  # judged on part of a level: no verdict
            _keep(level, mode, levels, say, outcome)
            return None
        reasons = stats.verdict(level, plan.slo, plan.error_budget, plan.good_share_target)
        level["verdict"] = {"passed": not reasons, "reasons": reasons}
        _keep(level, mode, levels, say, outcome)
        say(f"  {'pass' if not reasons else 'fail: ' + '; '.join(reasons)}")
        if gone is not None:
            outcome.server_gone = _gone_record(gone, payloads.name, mode, value)
            say(f"the server went away {gone.at_s:.1f} s into {payloads.name} {mode} {value:g}: {gone.how}")
            return None
        verdicts[value] = not reasons
        return not reasons

    lo, hi = bracket(test, plan.values[0], plan.search_max, 1 if mode == "concurrency" else None)
    while lo is not None and hi is not None:
        mid = midpoint(lo, hi, plan.search_tolerance, mode == "concurrency")
        passed = None if mid is None else test(mid)
        if passed is None:
            break
        lo, hi = (mid, hi) if passed else (lo, mid)
    result = search_result(payloads.name, mode, plan.slo.describe(), verdicts)
    result["complete"] = not (stop.requested or outcome.server_gone)
    if "warning" in result:
        outcome.warnings.append(f"{payloads.name} search: {result['warning']}")
        say(f"warning: {result['warning']}")
    say(result["statement"])
    return result


def bracket(test: Callable[[float], bool | None], start: float, most: float,
            least: float | None = None) -> tuple[float | None, float | None]:  # fmt: skip
    """Double from `start` until a point fails or `most` passes: (last passing, first failing), either None. Where
    `start` itself fails and `least` is given (users: 1), halve down to the first pass or to `least` instead (a
    search started where an earlier, rougher one found its capacity, say llmopt tune's last rung, may start too
    high)."""
    lo = None
    value = start
    if least is not None and start > least:
        passed = test(value)
        if passed is None:
            return None, None
        if not passed:
            hi = value
            while value > least:
                value = max(least, value // 2)
                passed = test(value)
                if passed is None:
                    return None, hi
                if passed:
                    return value, hi
                hi = value
            return None, hi
        lo = value
        if value >= most:
            return lo, None
        value = min(value * 2, most)
    while True:
        passed = test(value)
        if passed is None:
            return lo, None
        if not passed:
            return lo, value
        lo = value
        if value >= most:
            return lo, None
        value = min(value * 2, most)


def midpoint(lo: float, hi: float, tolerance: float, integer: bool) -> float | None:
    """The next point between a pass and a failure, or None once the bracket is within the tolerance (a fraction
    of its low end; for users, also one user)."""
    if hi - lo <= max(tolerance * lo, 1 if integer else 0):
        return None
    mid = (lo + hi) // 2 if integer else round((lo + hi) / 2, 6)
    return None if mid in (lo, hi) else mid


def search_result(bin_name: str, mode: str, slo: str, verdicts: dict[float, bool]) -> dict[str, Any]:
    passing = [v for v, ok in verdicts.items() if ok]
    failing = [v for v, ok in verdicts.items() if not ok]
    result: dict[str, Any] = {
        "bin": bin_name, "mode": mode, "slo": slo, "points": [{mode: v, "passed": ok} for v, ok in verdicts.items()],
        "largest_passing": max(passing, default=None), "smallest_failing": min(failing, default=None),
        "all_passed": bool(verdicts) and not failing, "all_failed": bool(verdicts) and not passing,
    }  # fmt: skip
    if passing and failing and max(passing) > min(failing):
        result["warning"] = (f"not monotonic: {mode} {max(passing):g} passed but {min(failing):g} failed "
                             "(an unstable server, or too few requests per point)")  # fmt: skip
    tried = ", ".join(f"{v:g}" for v in verdicts)
    if not verdicts:
        statement = f"{bin_name}: search not run"
    elif result["all_failed"]:
        statement = f"{bin_name}: every {mode} tried ({tried}) fails the SLOs ({slo})"
    elif result["all_passed"]:
        statement = f"{bin_name}: every {mode} tried ({tried}) meets the SLOs ({slo})"
    else:
        statement = (f"{bin_name}: largest {mode} meeting the SLOs ({slo}): {result['largest_passing']:g}; "
                     f"smallest failing: {result['smallest_failing']:g}")  # fmt: skip
    result["statement"] = statement
    return result


def level_line(level: dict[str, Any], mode: str) -> str:
    value = level[mode]
    e2e, ttft = level["e2e_s"], level["ttft_s"]

    def f(x: float | None, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    good = (
        ""
        if level.get("good_share") is None
        else f"  good {level['good_share']:.0%} {level['goodput_requests_per_s'] or 0:.2f}/s"
    )
    return (
        f"{level['bin']:>12} {mode} {value:<6g} {level['completed']:>4} ok {level['errors']:>3} err  "
        f"{f(level['requests_per_s'], '.2f')} req/s  {f(level['output_tokens_per_s'], '.1f')} tok/s  "
        f"e2e p50 {f(e2e['p50'])} p95 {f(e2e['p95'])} s  ttft p50 {f(ttft['p50'])} s  "
        f"tpot p50 {f(level['tpot_ms']['p50'], '.1f')} ms{good}"
    )
