"""The search itself, cheapest check first: (1) the estimate drops what cannot fit or cannot meet the TPOT objective
at the roofline; (2) the drift screen drops quality modes that drift past the thresholds; (3) the speed stage times
what is left (successive halving, or the grid), online as the heaviest load under the SLO, offline as docs/s;
(4) the paired ROUGE gate judges the finalists, drift deciding where it is inconclusive. Then the winner, the ties,
the Pareto fronts, every rejection with the constraint that bound it, the reproduction lines, and a validation run of
the winner with a fresh seed.

Every trial is a line of history.jsonl as it ends, and tune.json is rewritten after every stage, so an interrupted
search keeps what it found and `--resume` runs only what has no line yet.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from llmopt.files import write_json_atomic
from llmopt.tuning import choose, estimate, gate, reproduce, screen, trials
from llmopt.tuning.choose import Point
from llmopt.tuning.history import SUMMARY, History, Trial
from llmopt.tuning.search import Rung, grid, successive_halving
from llmopt.tuning.settings import Settings
from llmopt.tuning.space import Config, QualityMode, Space

PROMOTE_NOISE = 0.10
STEPS_DOWN = 2  # lower loads a validation that missed tries, each a load the search passed


class Tuner:
    def __init__(self, settings: Settings, space: Space, root: Path, executor: Any, say: Callable[[str], None],
                 run_drift: Callable[[list[str], Path], int]) -> None:  # fmt: skip
        self.settings, self.space, self.root, self.executor, self.say = settings, space, root, executor, say
        self.run_drift = run_drift
        self.history = History(root)
        self.points: dict[str, Point] = {c.key: Point(c) for c in space.configs}
        self.started = time.monotonic()
        self.summary: dict[str, Any] = {"settings": settings.as_dict(), "status": "running"}
        if self.history.resumed and (root / SUMMARY).is_file():  # a resumed search: the time its first sessions took
            import json

            earlier = json.loads((root / SUMMARY).read_text(encoding="utf-8"))
            self.summary["stage_seconds"] = earlier.get("stage_seconds") or {}

    # --- progress ----------------------------------------------------------------------------------------------
    def report(self, trial: Trial) -> None:
        """One line per trial as it ends, with the best configuration so far."""
        rung = f" r{trial.rung}" if trial.rung is not None else ""
        verdict = "ok" if trial.passed else f"rejected ({trial.bound})"
        figures = self._figures_text(trial)
        best = self._best_so_far()
        self.say(f"[{trial.stage}{rung}] {trial.key}: {verdict}{figures}; {trial.detail}".rstrip("; ")
                 + (f"  | best so far: {best}" if best else ""))  # fmt: skip

    def _figures_text(self, trial: Trial) -> str:
        f = trial.figures
        if trial.stage == "speed" and f.get("output_tokens_per_s") and f.get("capacity"):
            price = choose.cost(f["output_tokens_per_s"], self.settings.price_per_hour, "online")
            return (f", {f['capacity']:g} users, {f['output_tokens_per_s']:.1f} tok/s at the SLO"
                    + (f", {price:.3g} {choose.cost_unit('online')}" if price else ""))  # fmt: skip
        if trial.stage == "speed" and f.get("docs_per_sec"):
            price = choose.cost(f["docs_per_sec"], self.settings.price_per_hour, "offline")
            return f", {f['docs_per_sec']:.3f} docs/s" + (f", {price:.3g} {choose.cost_unit('offline')}" if price else "")
        return ""

    def _best_so_far(self) -> str | None:
        speed = {}
        for t in self.history.of("speed"):
            if t.passed and (t.rung or 0) >= speed.get(t.key, (None, -1))[1]:
                speed[t.key] = (t, t.rung or 0)
        if not speed:
            return None
        top = max(speed.values(), key=lambda tr: (tr[1], _throughput(tr[0]) or 0))[0]
        value = _throughput(top)
        unit = "tok/s" if self.settings.objective == "online" else "docs/s"
        return f"{top.key} ({value:.3g} {unit}, rung {top.rung})" if value else None

    def save(self, status: str | None = None) -> None:
        if status:
            self.summary["status"] = status
        self.summary["elapsed_s"] = time.monotonic() - self.started
        self.summary["trials_resumed"] = self.history.resumed
        self.summary["points"] = [_point_row(p, self.settings) for p in self.points.values()]
        write_json_atomic(self.root / SUMMARY, self.summary)

    # --- the stages ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.summary["space"] = {"source": self.space.source, "configurations": len(self.space.configs),
                                 "unavailable": self.space.unavailable}  # fmt: skip
        for engine, why in self.space.unavailable.items():
            self.say(f"not searched: {engine}: {why}")
        kept = self.timed("estimate", self.estimate_stage)
        kept = self.timed("drift", lambda: self.screen_stage(kept))
        measured = self.timed("speed", lambda: self.speed_stage(kept))
        self.timed("gate", lambda: self.gate_stage(measured))
        self.decide()
        self.timed("validate", self.validate)
        self.save("done")
        return self.summary

    def timed(self, stage: str, work: Callable[[], Any]) -> Any:
        """Run a stage and add its wall time to tune.json (in this session: a resumed stage counts what it redid)."""
        started = time.monotonic()
        try:
            return work()
        finally:
            seconds = self.summary.setdefault("stage_seconds", {})
            seconds[stage] = seconds.get(stage, 0.0) + time.monotonic() - started
            self.save()

    def estimate_stage(self) -> list[Config]:
        s = self.settings
        known = {c.key: self.history.get("estimate", c.key) for c in self.space.configs}
        todo = [c for c in self.space.configs if known[c.key] is None]
        host = estimate.host() if todo else None
        if host is not None:
            self.summary["host"] = asdict(host)
        tpot = _tpot_limit_ms(s.slo) if s.objective == "online" else None
        if todo:
            assert host is not None
            dtype = estimate.dtype_here(s.model, on_gpu=host.on_gpu)
            tokens = _prompt_tokens_guess(s) + s.max_new_tokens
            kept, pruned = estimate.prune(todo, host, tokens, tpot, dtype)
            for config, est in kept:
                known[config.key] = self.history.add(Trial("estimate", config.key, figures=est.as_dict(),
                                                           detail=f"at least {est.memory_bytes / 2**30:.2f} GiB, "
                                                           f"TPOT floor {est.tpot_floor_ms:.1f} ms"))  # fmt: skip
            for p in pruned:
                est = estimate.estimate(p.config, host, estimate.batch_of(p.config), tokens, dtype)
                known[p.config.key] = self.history.add(Trial("estimate", p.config.key, passed=False, bound=p.reason,
                                                             detail=p.detail, figures=est.as_dict()))  # fmt: skip
                self.report(known[p.config.key])
        alive = []
        for config in self.space.configs:
            trial = known[config.key]
            assert trial is not None
            point = self.points[config.key]
            point.figures["estimate"] = trial.figures
            if trial.passed:
                alive.append(config)
            else:
                point.rejected, point.detail = trial.bound, trial.detail
        self.say(f"estimate: {len(alive)} of {len(self.space.configs)} configurations can fit and meet the TPOT floor")
        return alive

    def screen_stage(self, configs: list[Config]) -> list[Config]:
        modes = list(dict.fromkeys(c.quality_mode() for c in configs))
        if not modes:
            return []
        s = self.settings
        self.say(f"drift screen: {len(modes)} quality modes against {s.reference} {s.reference_dtype}, "
                 f"{s.drift_docs} documents x {s.drift_tokens} tokens")  # fmt: skip
        results = screen.screen(modes, self.settings, self.root, self.history, self.run_drift, self.report)
        self.summary["drift"] = {label: asdict(t) for label, t in results.items()}
        alive = []
        for config in configs:
            trial = results[config.quality_mode().label]
            point = self.points[config.key]
            point.kl_mean, point.top1 = trial.figures.get("kl_mean"), trial.figures.get("top1_agreement")
            if trial.passed:
                alive.append(config)
            else:
                point.rejected, point.detail = "drift", f"{config.quality_mode().label}: {trial.detail}"
        return alive

    def rungs(self) -> list[Rung]:
        s = self.settings
        if s.objective == "online":
            # Early rungs rank roughly: doubling only, one wave of requests a level after a single warm-up request, the
            # point estimate. The last decides: doubling then bisection to 25%, two waves after one warm-up request
            # per user (the pipeline full before the clock), the SLO at its confidence bound.
            last = len(s.rung_requests) - 1
            return [Rung(k, {"requests": n, "tolerance": 0.25, "confidence": s.confidence, "requests_per_user": 2}
                         if k == last else {"requests": n, "tolerance": 1.0, "confidence": None,
                                            "requests_per_user": 1, "warmup_requests": 1})
                    for k, n in enumerate(s.rung_requests)]  # fmt: skip
        return [Rung(k, {"docs": n}) for k, n in enumerate(s.rung_docs)]

    def speed_stage(self, configs: list[Config]) -> dict[str, Trial]:
        if not configs:
            return {}
        rungs = self.rungs()
        starts: dict[str, int] = {}

        def run(rung: Rung, alive: list[Config]) -> dict[str, Trial]:
            self.say(f"speed, rung {rung.index}: {len(alive)} configurations, {_budget_text(rung.budget)}")
            found = trials.run_rung(rung, alive, self.settings, self.root, self.history, self.executor, self.say,
                                    self.report, starts)  # fmt: skip
            for key, trial in found.items():  # the next rung's search starts at the capacity found here (and halves
                cap = trial.figures.get("capacity")  # down from it where the stricter rung fails it)
                if cap:
                    starts[key] = int(cap)
            self.save()
            return found

        if self.settings.search == "grid":
            last = grid(configs, rungs, run)
        else:
            # Promoted too: a configuration within 10% of the last one kept (rung 0's doubling resolves capacity only to
            # a factor of 2, but its throughput at that capacity to about this)
            last = successive_halving(configs, rungs, run, _score(self.settings), self.settings.eta, 2, PROMOTE_NOISE, self.say)
        for key, trial in last.items():
            point = self.points[key]
            point.figures["speed"] = {**trial.figures, "rung": trial.rung, "folder": trial.folder}
            if point.figures["speed"].get("tpot_ms_c1_p50") is None:  # a later rung that started above one user:
                earlier = [t for t in self.history.of("speed") if t.key == key and t.figures.get("tpot_ms_c1_p50")]
                if earlier:  # the one-user TPOT an earlier rung measured (the estimate's error is read from it)
                    point.figures["speed"]["tpot_ms_c1_p50"] = earlier[-1].figures["tpot_ms_c1_p50"]
            point.throughput = _throughput(trial)
            point.memory_bytes = trial.figures.get("memory_bytes")
            point.latency_s = trial.figures.get("ttft_p95_s")
            if point.latency_s is None and trial.figures.get("docs_per_sec"):
                point.latency_s = 1 / trial.figures["docs_per_sec"]
            if not trial.passed:
                point.rejected, point.detail = trial.bound, trial.detail
            elif trial.rung != rungs[-1].index:
                point.rejected, point.detail = "behind", f"not promoted past rung {trial.rung}: slower than the rest"
        return last

    def gate_stage(self, measured: dict[str, Trial]) -> None:
        """Finalists in order of the objective, gated until `finalists` have kept their quality or none are left."""
        s = self.settings
        ordered = sorted((p for p in self.points.values() if p.rejected is None),
                         key=lambda p: choose.rank_key(p, s.optimize))  # fmt: skip
        kept: list[Point] = []
        for start in range(0, len(ordered), s.finalists):
            batch = [p for p in ordered[start : start + s.finalists]]
            if not batch or len(kept) >= s.finalists:
                break
            modes = list(dict.fromkeys(p.config.quality_mode() for p in batch))
            self.say(f"gate: {', '.join(m.label for m in modes)} against {s.reference} {s.reference_dtype} "
                     f"on {s.gate_docs or 'every'} documents of {s.dataset}")  # fmt: skip
            results = gate.run_gate(modes, s, self.root, self.history, self._run_gate_cells, self.report, self._gate_batch)
            self.summary["gate"] = {**self.summary.get("gate", {}), **{k: asdict(t) for k, t in results.items()}}
            for point in batch:
                self._decide_quality(point, results[point.config.quality_mode().label])
                if point.rejected is None:
                    kept.append(point)
        for point in ordered:
            if point.quality_decided_by is None and point.rejected is None:
                point.quality_decided_by = "drift (not a finalist: no gate run)"

    def _decide_quality(self, point: Point, trial: Trial) -> None:
        verdict = trial.figures.get("verdict")
        point.gate = verdict
        drift = self.history.get(screen.DRIFT, point.config.quality_mode().label)
        drift_measured = drift is not None and drift.figures.get("measured")
        if verdict == "failed":
            point.rejected, point.detail, point.quality_decided_by = "gate", trial.detail, "gate"
        elif verdict == "passed":
            point.quality_decided_by = "gate"
        elif drift_measured:
            point.quality_decided_by = f"drift (gate {verdict or 'not run'}: {trial.detail})"
        else:
            point.rejected, point.quality_decided_by = "quality", "neither"
            point.detail = f"quality not established: gate {verdict or 'not run'} and drift not measured"

    def _run_gate_cells(self, folder: Path, cells: list[dict[str, Any]]) -> dict[int, tuple[str, dict[str, Any]]]:
        spec = trials.experiment_for(self.settings, "tune-gate", cells)
        return trials.run_cells(folder, spec, self.executor, self.say, lambda k, name, state: None)

    def _gate_batch(self, strategy: str) -> int:
        from llmopt import strategies

        cls = strategies.resolve(strategy)
        return 1 if cls.engine_batching or cls.max_batch_size == 1 else 8

    def decide(self) -> None:
        s = self.settings
        points = list(self.points.values())
        noise = self.rungs()[-1].budget.get("tolerance", 0.05) if s.objective == "online" else 0.05
        best, ties = choose.winner(points, s.optimize, noise)
        self.summary["winner"] = _point_row(best, s) if best else None
        self.summary["ties"] = [_point_row(p, s) for p in ties]
        self.summary["tie_noise"] = noise
        self.summary["fronts"] = {
            "cost_vs_kl": [p.key for p in choose.pareto(points, "cost", "kl", s.optimize)],
            "cost_vs_latency": [p.key for p in choose.pareto(points, "cost", "latency", s.optimize)],
        }
        self.summary["rejected"] = [{"key": p.key, "bound": p.rejected, "detail": p.detail}
                                    for p in points if p.rejected]  # fmt: skip
        if best is None:
            miss = choose.closest_miss(points)
            closest = ""
            if miss:
                closest = f"closest: {miss.key}, {miss.detail} ({miss.figures['overshoot'] - 1:.0%} over at best)"
            self.summary["verdict"] = closest or "every configuration was rejected (below, each with its reason)"
            self.say(self.summary["verdict"])
            return
        self.summary["verdict"] = f"winner: {best.key}"
        self.summary["reproduce"] = self.lines(best, seed=None)

    def lines(self, point: Point, seed: int | None, users: int | None = None) -> dict[str, Any]:
        s = self.settings
        if s.objective == "offline":
            return {"run": reproduce.run_line(point.config, s)}
        capacity = users or point.figures.get("speed", {}).get("capacity")
        return reproduce.online_lines(point.config, s, int(capacity) if capacity else None, s.rung_requests[-1], seed,
                                      _server_line(point.config))  # fmt: skip

    def validate(self) -> None:
        """The winner once more, as its printed lines run it, with a fresh seed: does it still meet the SLO? Where it
        misses online, the next lower load the search passed is tried (at most STEPS_DOWN of them): the figures and
        the lines printed are those of the load that was confirmed."""
        best = self.summary.get("winner")
        if not best:
            return
        point = self.points[best["key"]]
        loads: list[int | None] = [None]
        if self.settings.objective == "online":
            speed = point.figures.get("speed", {})
            capacity = int(speed["capacity"])
            lower = sorted((int(c) for c in speed.get("passing_levels") or [] if c < capacity), reverse=True)
            loads = [capacity, *lower[:STEPS_DOWN]]
        attempts: list[Trial] = []
        seed = None
        for attempt, users in enumerate(loads):
            known = self.history.get("validate", point.key, attempt or None)
            if known is None:
                seed = seed or (attempts[0].figures.get("seed") if attempts else None)
                seed = seed or random.SystemRandom().randrange(1, 2**31)
                at = f" at {users} users" if users else ""
                self.say(f"validating {point.key}{at} with a fresh seed ({seed})")
                known = self.history.add(self._validation_trial(point, seed, users, attempt))
                self.report(known)
            attempts.append(known)
            if known.passed or known.bound != "slo":
                break
        final = attempts[-1]
        self.summary["validation"] = asdict(final)
        self.summary["validation_attempts"] = [asdict(t) for t in attempts]
        confirmed = final.figures.get("concurrency") if final.passed else None
        self.summary["reproduce"] = self.lines(point, final.figures.get("seed"), confirmed)
        if confirmed and len(attempts) > 1:
            self.summary["confirmed"] = self._confirmed(point, final)

    def _confirmed(self, point: Point, final: Trial) -> dict[str, Any]:
        """The winner at the load its validation confirmed, and whether another configuration measured more there."""
        tps = final.figures.get("output_tokens_per_s")
        cost = choose.cost(tps, self.settings.price_per_hour, "online")
        ahead = [p.key for p in self.points.values() if not p.rejected and p.key != point.key and p.throughput
                 and tps and p.throughput > tps]  # fmt: skip
        return {"users": final.figures.get("concurrency"), "output_tokens_per_s": tps, "cost": cost,
                "ahead": ahead}  # fmt: skip

    def _validation_trial(self, point: Point, seed: int, users: int | None = None, attempt: int = 0) -> Trial:
        s = self.settings
        name = "validate" if not attempt else f"validate-{users}u"
        folder = self.root / name
        if s.objective == "offline":
            cell = trials.cell_for(s, Rung(len(s.rung_docs) - 1, {"docs": s.rung_docs[-1]}), point.config)
            cell["name"] = "validate"
            ran = trials.run_cells(folder, trials.experiment_for(s, "tune-validate", [cell]), self.executor, self.say,
                                   lambda k, n, st: None)  # fmt: skip
            state = ran[0][1] if 0 in ran else {}
            dps, before = state.get("docs_per_sec"), point.throughput
            trial = Trial("validate", point.key, folder="validate", figures={"seed": seed, "docs_per_sec": dps,
                                                                              "searched_docs_per_sec": before})  # fmt: skip
            trial.passed = bool(dps) and state.get("status") == "ok"
            trial.detail = f"{dps:.3f} docs/s again (the search measured {before:.3f})" if dps and before else "did not run"
            return trial
        capacity = users or int(point.figures["speed"]["capacity"])
        load = {"concurrency": str(capacity), "requests": s.rung_requests[-1], "slo": s.slo, "api": s.api,
                "requests_per_user": trials.REQUESTS_PER_USER,
                "seed": seed, "serve_arg": trials.serve_args(point.config), "timeout": s.trial_timeout_s}  # fmt: skip
        # No --confidence: the validation, and the line that reproduces it, judge a fresh run's percentiles as measured
        # (the search's last rung already held each level to the confidence bound)
        ref_trial = next((t for t in self.history.of("gate") if t.figures.get("reference_folder")), None)
        reference = self.root / ref_trial.figures["reference_folder"] if ref_trial else self.root / "gate" / "none"
        if (reference / "records.jsonl").is_file():
            load["quality_reference"] = str(reference.resolve())
            load["quality_floor"] = s.quality_floor
        load.update(trials.serve_options(point.config))
        cell = {"name": "validate", "serve": point.config.engine, "model": point.config.model, "load": load}
        spec = trials.experiment_for(s, "tune-validate", [cell], served=True)
        states = trials.run_cells(folder, spec, self.executor, self.say, lambda k, n, st: None)
        return validation_verdict(point, states[0][1] if 0 in states else {}, s, seed, attempt, name)


def validation_verdict(point: Point, state: dict[str, Any], settings: Settings, seed: int, attempt: int = 0,
                       folder: str = "validate") -> Trial:  # fmt: skip
    from llmopt.serving import stats

    trial = Trial("validate", point.key, attempt or None, folder=folder, figures={"seed": seed})
    levels = state.get("levels") or []
    if not levels:
        trial.passed, trial.bound = False, "failed"
        trial.detail = f"the validation load test did not run: {(state.get('errors') or [state.get('status')])[0]}"
        return trial
    level = levels[0]
    slo = stats.parse_slo(str(settings.slo))
    reasons = stats.verdict(level, slo, 0.0, None)
    trial.figures.update({
        "concurrency": level.get("concurrency"), "output_tokens_per_s": level.get("output_tokens_per_s"),
        "slo_statistics": level.get("slo_statistics"), "good_share": level.get("good_share"),
        "goodput_requests_per_s": level.get("goodput_requests_per_s"),
        "quality_goodput_requests_per_s": level.get("quality_goodput_requests_per_s"),
        "quality_good_share": level.get("quality_good_share"),
    })  # fmt: skip
    trial.passed = not reasons
    trial.bound = None if trial.passed else "slo"
    stats_text = ", ".join(f"{k} {v:.0f}" for k, v in (level.get("slo_statistics") or {}).items() if v is not None)
    trial.detail = (f"meets the SLO again at {level.get('concurrency'):g} users ({stats_text})" if trial.passed
                    else f"misses the SLO at {level.get('concurrency'):g} users: {'; '.join(reasons)}")  # fmt: skip
    return trial


def _server_line(config: Config) -> str | None:
    """The server's own command line for this configuration (its model resolved), where the server knows it."""
    import os

    from llmopt.serving import server

    try:
        one = server.server_for(config.engine, config.model, Path(os.devnull), extra_args=trials.serve_args(config),
                                **trials.serve_options(config))  # fmt: skip
        one.prepare()  # finds the model's files (their path is in the line); starts nothing
    except Exception:  # a server that cannot say (its model not here): the one-command line stands alone
        return None
    one.port = 8000
    return one.command_line()


def _throughput(trial: Trial) -> float | None:
    return trial.figures.get("output_tokens_per_s") if trial.figures.get("capacity") else trial.figures.get("docs_per_sec")


def _score(settings: Settings) -> Callable[[Trial], float | None]:
    if settings.optimize == "memory":
        return lambda t: -(t.figures.get("memory_bytes") or 0) or None
    return _throughput


def _tpot_limit_ms(slo: str | None) -> float | None:
    if not slo:
        return None
    from llmopt.serving.stats import parse_slo

    return parse_slo(slo).limits_ms.get("tpot")


def _prompt_tokens_guess(settings: Settings) -> int:
    """The longest prompt of the dataset, in words x 1.5 (no tokenizer is loaded in this process): only the KV
    cache's share of the memory estimate depends on it."""
    from llmopt.documents.datasets import load_dataset

    docs = load_dataset(settings.dataset)
    return int(1.5 * max((len(d.document.split()) for d in docs), default=512)) + 64


def _budget_text(budget: dict[str, Any]) -> str:
    if "docs" in budget:
        return f"{budget['docs']} documents each"
    conf = f", verdict at {budget['confidence']:.0%} confidence" if budget.get("confidence") else ""
    search = "doubling the users" if budget["tolerance"] >= 1 else f"doubling, then bisection to {budget['tolerance']:.0%}"
    return f"at least {budget['requests']} requests a level ({budget['requests_per_user']} per user), {search}{conf}"


def _point_row(point: Point, settings: Settings) -> dict[str, Any]:
    return {
        "key": point.key, "engine": point.config.engine, "model": point.config.model,
        "settings": dict(point.config.settings), "quality_mode": point.config.quality_mode().label,
        "throughput": point.throughput,
        "throughput_unit": "output tokens/s at the SLO" if settings.objective == "online" else "docs/s",
        "cost": choose.cost(point.throughput, settings.price_per_hour, settings.objective),
        "cost_unit": choose.cost_unit(settings.objective), "memory_bytes": point.memory_bytes,
        "latency_s": point.latency_s, "kl_mean": point.kl_mean, "top1_agreement": point.top1, "gate": point.gate,
        "quality_decided_by": point.quality_decided_by, "rejected": point.rejected, "detail": point.detail,
        "figures": point.figures,
    }  # fmt: skip


def modes_of(points: list[Point]) -> list[QualityMode]:
    return list(dict.fromkeys(p.config.quality_mode() for p in points))
