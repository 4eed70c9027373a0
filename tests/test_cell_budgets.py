"""A cell's own share of an experiment (what the GPU check gives each cell): its documents, tokens and timeout."""

from __future__ import annotations

import pytest

from llmopt.errors import UsageError
from llmopt.sweeps.experiment import parse

SPEC = {
    "name": "budget",
    "model": "tiny",
    "generation": {"max_new_tokens": 300, "limit": 100},
    "timeout_s": 3600,
    "cells": [
        {"strategy": "default", "batch_size": [1, "auto"], "options": {"limit": 2}, "timeout_s": 60},
        {"strategy": "8bit", "options": {"max_new_tokens": 50}},
    ],
}


def test_a_cell_takes_its_own_limit_tokens_and_timeout():
    exp = parse(SPEC, "budget.yaml")
    b1, auto, eight = exp.cells
    assert [c.name for c in exp.cells] == ["default-b1", "default-bauto", "8bit"]
    for cell in (b1, auto):
        args = cell.run_args(exp)
        assert args[args.index("--limit") + 1] == "2" and args.count("--limit") == 1, "the cell's limit replaces the 100"
        assert cell.timeout_s(exp) == 60
    args = eight.run_args(exp)
    assert args[args.index("--limit") + 1] == "100" and args[args.index("--max-new-tokens") + 1] == "50"
    assert eight.timeout_s(exp) == 3600, "the experiment's timeout where the cell gives none"


@pytest.mark.parametrize("bad", [0, "soon", True])
def test_a_bad_cell_timeout_is_one_clear_error(bad):
    spec = {**SPEC, "cells": [{"strategy": "default", "timeout_s": bad}]}
    with pytest.raises(UsageError, match=r"budget.yaml: cells\[0\].timeout_s"):
        parse(spec, "budget.yaml")
