"""llmopt tune's decisions on given figures: the space file, successive halving's cuts, the winner and its ties, the
Pareto fronts, the gate's documents to settle, and bad input as one line. What runs engines is in test_tune.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_usage_error, run_cli

from llmopt.errors import UsageError
from llmopt.quality.paired import PairedDelta
from llmopt.tuning import choose, gate, search, space
from llmopt.tuning.choose import Point
from llmopt.tuning.history import History, Trial

TUNE = "llmopt.tune"


def config(engine: str, **settings) -> space.Config:
    spec = space.ONLINE[engine]
    values = {k.name: k.default[0] for k in spec.knobs} | settings
    return space.Config(engine, "online", "smollm2-135m", tuple((k.name, values[k.name]) for k in spec.knobs))


# --- the space ------------------------------------------------------------------------------------------------------
def test_space_file_expands_the_cross_product_and_keeps_the_engine_defaults():
    data = {"engines": {"vllm": {"max_num_seqs": [4, 16], "ngram": [False, True]}}}
    configs = [c for c in space.parse_space(data, "s.yaml", "online", "tiny").configs if c.engine == "vllm"]
    assert sorted(c.key for c in configs) == sorted(
        f"vllm max_num_seqs={n} max_num_batched_tokens=default kv_cache_dtype=auto ngram={g} enforce_eager=off"
        for n in (4, 16) for g in ("off", "on")
    )  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"engines": {"vlm": {}}}, "unknown engine"),
        ({"engines": {"vllm": {"max_seqs": [4]}}}, "no knob 'max_seqs'"),
        ({"engines": {"vllm": {"max_num_seqs": ["four"]}}}, "takes int values"),
        ({"engines": {"llamacpp": {"gguf_type": ["q3"]}}}, "gguf_type takes"),
        ({"modes": {"default": {}}}, "is for --objective offline"),
        ({"engines": {}}, "must map each engine"),
        ({"engine": {"vllm": {}}}, "unknown key 'engine'"),
    ],
)
def test_space_file_errors_name_the_place(data, message):
    with pytest.raises(UsageError, match=message):
        space.parse_space(data, "s.yaml", "online", "tiny")


def test_offline_modes_take_their_own_knobs():
    with pytest.raises(UsageError, match="no knob 'max_num_seqs'"):
        space.parse_space({"modes": {"default": {"max_num_seqs": [4]}}}, "s.yaml", "offline", "tiny")


def test_quality_mode_keeps_weight_formats_and_drops_speed_knobs():
    assert config("transformers", quantization="bnb-4bit", compile=True).quality_mode().label == "4bit"
    assert config("transformers").quality_mode().label == "default"
    assert config("llamacpp", gguf_type="q8_0", n_batch=64).quality_mode().label == "llamacpp[gguf_type=q8_0]"
    assert config("llamacpp").quality_mode().label == "llamacpp"  # the published file
    assert config("vllm", max_num_seqs=16, ngram=True).quality_mode().label == "vllm"
    assert config("vllm", kv_cache_dtype="fp8").quality_mode().label == "vllm[kv_cache_dtype=fp8]"


# --- successive halving ---------------------------------------------------------------------------------------------
def speeds(table: dict[str, float | None]):
    """A run function that reports the given throughput per configuration (None: rejected), and what it ran."""
    ran: list[tuple[int, list[str]]] = []

    def run(rung: search.Rung, configs: list[space.Config]) -> dict[str, Trial]:
        ran.append((rung.index, [c.key for c in configs]))
        out = {}
        for c in configs:
            value = table[c.key]
            trial = Trial("speed", c.key, rung.index, passed=value is not None, bound=None if value else "slo")
            trial.figures = {"output_tokens_per_s": value, "capacity": 4} if value else {}
            out[c.key] = trial
        return out

    return run, ran


def score(trial: Trial) -> float | None:
    return trial.figures.get("output_tokens_per_s")


def test_halving_keeps_one_in_eta_and_the_ones_within_noise_of_the_cut():
    configs = [config("vllm", max_num_seqs=n) for n in (1, 2, 3, 4, 5, 6)]
    table = dict(zip([c.key for c in configs], [10.0, 50.0, 49.0, 30.0, None, 20.0], strict=True))
    run, ran = speeds(table)
    last = search.successive_halving(configs, [search.Rung(0, {}), search.Rung(1, {})], run, score, eta=3,
                                     keep_at_least=1, noise=0.05)  # fmt: skip
    # 6 / 3 = 2 go on (50 and 49); nothing else is within 5% of 49; the rejected one never goes on
    assert ran[1] == (1, [configs[1].key, configs[2].key])
    assert last[configs[0].key].rung == 0 and last[configs[1].key].rung == 1
    table[configs[3].key] = 48.0  # now within 5% of the cut: promoted too
    run, ran = speeds(table)
    search.successive_halving(configs, [search.Rung(0, {}), search.Rung(1, {})], run, score, 3, 1, 0.05)
    assert set(ran[1][1]) == {configs[1].key, configs[2].key, configs[3].key}


def test_grid_runs_everything_at_the_last_rung():
    configs = [config("vllm", max_num_seqs=n) for n in (1, 2)]
    run, ran = speeds({c.key: 1.0 for c in configs})
    search.grid(configs, [search.Rung(0, {}), search.Rung(1, {})], run)
    assert ran == [(1, [c.key for c in configs])]


# --- the choice -----------------------------------------------------------------------------------------------------
def point(c: space.Config, throughput: float | None, kl: float | None = 0.01, latency: float | None = 1.0,
          rejected: str | None = None) -> Point:  # fmt: skip
    return Point(c, throughput=throughput, kl_mean=kl, latency_s=latency, rejected=rejected)


def test_a_tie_within_noise_goes_to_the_simpler_engine():
    simple = point(config("transformers"), 100.0)
    fast = point(config("vllm", max_num_seqs=16), 103.0)
    best, ties = choose.winner([fast, simple], "cost", noise=0.05)
    assert best is simple and ties == [fast]
    best, ties = choose.winner([fast, simple], "cost", noise=0.01)  # 3% apart is no tie at 1%
    assert best is fast and ties == []


def test_rejected_configurations_never_win_and_nothing_left_is_a_verdict():
    fast = point(config("vllm"), 500.0, rejected="drift")
    assert choose.winner([fast], "cost", 0.05) == (None, [])


def test_pareto_front_of_cost_against_drift():
    a = point(config("vllm"), 100.0, kl=0.02)  # cheapest
    b = point(config("llamacpp"), 50.0, kl=0.001)  # dearer, closer to the reference
    c = point(config("transformers"), 40.0, kl=0.05)  # dearer and further: dominated by b
    assert choose.pareto([a, b, c], "cost", "kl") == [a, b]


def test_cost_per_million_tokens_and_per_100_documents():
    assert choose.cost(100.0, 3.6, "online") == pytest.approx(10.0)  # 3.6 USD/h over 360,000 tokens/h, per 1M
    assert choose.cost(1.0, 3.6, "offline") == pytest.approx(0.1)  # 3,600 documents an hour, per 100
    assert choose.cost(None, 3.6, "online") is None and choose.cost(5.0, None, "online") is None


# --- the gate -------------------------------------------------------------------------------------------------------
def test_an_inconclusive_gate_says_how_many_documents_would_settle_it():
    # ROUGE-1 at 0.985 of the reference, interval [0.95, 1.02] on 22 documents: half-width 0.035 at 0.005 from 0.99
    straddling = PairedDelta(22, -0.003, -0.01, 0.004, 0.985, 0.95, 1.02)
    clear = PairedDelta(22, 0.01, 0.0, 0.02, 1.05, 1.0, 1.1)
    assert gate.documents_to_settle({"rouge1": straddling, "rouge2": clear}, 0.99, 22) == 1078  # 22 * 7^2
    on_the_bar = PairedDelta(22, 0.0, -0.01, 0.01, 0.99, 0.95, 1.03)
    assert gate.documents_to_settle({"rouge1": on_the_bar}, 0.99, 22) is None


# --- the history ----------------------------------------------------------------------------------------------------
def test_history_keeps_every_whole_line_and_drops_a_cut_one(tmp_path: Path):
    history = History(tmp_path)
    history.add(Trial("speed", "a", 0, figures={"x": 1}))
    history.add(Trial("drift", "default"))
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write('{"stage": "speed", "key": "b", "ru')  # a hard kill mid-line
    again = History(tmp_path)
    assert again.resumed == 2 and again.get("speed", "a", 0).figures == {"x": 1} and again.get("speed", "b", 0) is None


# --- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slo", "ttft=fast"], "is not like ttft=500ms"),
        (["--slo", "ttft=2s", "--gate", "0"], "must be in (0, 100]%"),
        (["--slo", "ttft=2s", "--gate", "150%"], "must be in (0, 100]%"),
        ([], "needs --slo"),
        (["--objective", "offline", "--slo", "ttft=2s"], "--slo is for --objective online"),
        (["--slo", "ttft=2s", "--max-drift", "kl=-1"], "kl takes a number"),
        (["--slo", "ttft=2s", "--reference", "defualt"], "unknown strategy"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path: Path):
    result = run_cli(TUNE, "--model", "tiny", "--out", tmp_path / "t", *args)
    assert_usage_error(result, message)
    assert not (tmp_path / "t").exists()


def test_a_space_file_with_an_unknown_knob_is_one_line(tmp_path: Path):
    path = tmp_path / "space.yaml"
    path.write_text("engines:\n  vllm: {max_seqs: [4]}\n")
    result = run_cli(TUNE, "--model", "tiny", "--slo", "ttft=2s", "--space", path, "--out", tmp_path / "t")
    assert_usage_error(result, "space.yaml: engines.vllm: engine 'vllm' has no knob 'max_seqs'")


def settings(**given):
    """Settings as `llmopt tune` makes them by default, with the given ones changed."""
    from llmopt.commands.tune import parser, settings_from

    args = parser("llmopt tune").parse_args(["--model", given.pop("model", "tiny"), "--objective", "offline"])
    from dataclasses import replace

    return replace(settings_from(args, "offline"), **given)


def test_the_last_rung_is_raised_to_the_requests_that_can_bound_the_slo():
    from llmopt.tuning.settings import enough_requests

    assert enough_requests("ttft=2s,tpot=100ms", 0.9, (8, 24)) == ((8, 45), enough_requests("ttft=2s", 0.9, (8, 24))[1])
    assert enough_requests("ttft=2s@p90", 0.9, (8, 24))[0] == (8, 24)  # 22 bound p90 at 90%
    assert enough_requests("ttft=2s", 0.0, (8, 24)) == ((8, 24), None)  # the point estimate: nothing to raise
