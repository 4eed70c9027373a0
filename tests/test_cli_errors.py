"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_unavailable, assert_usage_error, run_cli, write_jsonl

RUN = "llmopt.run"


def test_unknown_strategy_suggests_the_closest_name():
    assert_usage_error(run_cli(RUN, "--strategy", "defualt", "--dataset", "sample"), "unknown strategy", "default")


def test_missing_optional_package_prints_pip_command():
    assert_unavailable(run_cli(RUN, "--strategy", "gptq", "--dataset", "sample"), "pip install", "gptqmodel")


def test_gpu_only_strategy_says_what_this_machine_lacks():
    """flash-attn needs the package and a GPU of compute capability 8.0+; the line names what this host lacks."""
    import importlib.util

    from llmopt.strategies import cuda_capability

    capability = cuda_capability()
    if capability is not None and capability >= (8, 0) and importlib.util.find_spec("flash_attn"):
        pytest.skip("this host runs flash-attn")
    result = run_cli(RUN, "--strategy", "flash-attn", "--dataset", "sample")
    if capability is None:
        assert_unavailable(result, "needs a CUDA GPU", "8.0", "has none")
    elif capability < (8, 0):
        assert_unavailable(result, "needs a CUDA GPU", "8.0", "this one is")
    else:
        assert_unavailable(result, "missing flash_attn", "pip install flash-attn --no-build-isolation")


def test_model_folder_that_does_not_exist(tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli(RUN, "--strategy", "default", "--model", tmp_path / "no-such-model", "--dataset", "sample", "--out", out)
    assert_usage_error(result, "does not exist")
    assert not out.exists(), "a failed start must not leave a results folder behind"


def test_hub_id_that_cannot_be_found(tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli(RUN, "--strategy", "default", "--model", "nobody/no-such-model", "--dataset", "sample", "--out", out)
    assert_usage_error(result, "nobody/no-such-model")
    assert not out.exists()


def test_malformed_dataset_names_the_line(tmp_path: Path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "document": "x", "summary": "y"}\n{"id": "b", "document": \n')
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", path), "docs.jsonl:2", "not valid JSON")


def test_dataset_line_without_a_field_names_the_line(tmp_path: Path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "document": "x", "summary": "y"}, {"id": "b", "document": "x"}])
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", path), "docs.jsonl:2", "summary")


def test_missing_and_empty_and_unreadable_datasets(tmp_path: Path):
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", tmp_path / "nope.jsonl"), "does not exist")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", empty), "no documents")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", binary), "binary.jsonl")


def test_zero_and_negative_numbers_are_refused():
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", "sample", "--limit", "0"), "--limit")
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", "sample", "--batch-size", "-4"), "--batch-size")
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", "sample", "--max-new-tokens", "x"), "--max-new-tokens")


def test_output_folder_that_cannot_be_written(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", "sample", "--out", blocker / "run"), "cannot write")


@pytest.mark.parametrize("preset", ["published", "multinomial"])
def test_a_sampling_preset_needs_a_seed(preset: str):
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", "sample", "--sampling", preset), "--seed")


def test_existing_run_folder_needs_resume_and_resume_refuses_another_run(tmp_path: Path):
    out = tmp_path / "run"
    first = run_cli(RUN, "--strategy", "lead", "--dataset", "sample", "--limit", "3", "--out", out)
    assert first.returncode == 0, first.stderr
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", "sample", "--out", out), "--resume")
    other = run_cli(RUN, "--strategy", "lead", "--dataset", "sample", "--max-new-tokens", "5", "--out", out, "--resume")
    assert_usage_error(other, "other settings", "max_new_tokens")
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--dataset", "sample", "--out", tmp_path, "--resume"), "no llmopt run")


def test_user_strategy_errors(tmp_path: Path):
    assert_usage_error(run_cli(RUN, "--strategy", tmp_path / "missing.py:Thing", "--dataset", "sample"), "does not exist")
    bad = tmp_path / "bad.py"
    bad.write_text("class NotAStrategy:\n    pass\n")
    assert_usage_error(run_cli(RUN, "--strategy", f"{bad}:NotAStrategy", "--dataset", "sample"), "not a subclass")
    assert_usage_error(run_cli(RUN, "--strategy", f"{bad}:Missing", "--dataset", "sample"), "no class")


def test_unknown_flag_is_one_line():
    assert_usage_error(run_cli(RUN, "--strategy", "lead", "--bogus"), "unrecognized arguments")


def test_score_errors(tmp_path: Path):
    assert_usage_error(run_cli("llmopt.score", "--predictions", tmp_path / "none.jsonl"), "does not exist")
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prediction": "a", "reference": "b"}\n{"prediction": "a"}\n')
    assert_usage_error(run_cli("llmopt.score", "--predictions", bad), "p.jsonl:2", "reference")
