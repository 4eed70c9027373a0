"""One `llmopt` command with a subcommand per job, installed by pip; `python -m llmopt` and `python -m llmopt.X`
are the same commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, assert_usage_error, cli_env, read_json

from llmopt.commands.main import COMMANDS


def llmopt(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The console script pip installed beside this Python (make install: pip install -e)."""
    script = Path(sys.executable).parent / "llmopt"
    if not script.is_file():
        pytest.skip("the llmopt console script is not installed here (pip install -e .)")
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=cli_env())


def test_the_command_lists_its_subcommands():
    result = llmopt("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in result.stdout
    assert llmopt().returncode == 2, "no subcommand is a usage error"


def test_an_unknown_subcommand_is_one_line_with_the_closest_name():
    assert_usage_error(llmopt("sweeep"), "unknown command 'sweeep'", "did you mean sweep")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_answers_help(name: str):
    result = llmopt(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: llmopt {name}")


def test_the_three_doors_run_the_same_command(tmp_path: Path):
    doors = {
        "console": [str(Path(sys.executable).parent / "llmopt"), "run"],
        "package": [sys.executable, "-m", "llmopt", "run"],
        "module": [sys.executable, "-m", "llmopt.run"],
    }
    counts = set()
    ran = 0
    for door, cmd in doors.items():
        if door == "console" and not Path(cmd[0]).is_file():
            continue
        out = tmp_path / door
        args = ["--strategy", "lead", "--dataset", "sample", "--limit", "3", "--out", str(out)]
        result = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=ROOT, env=cli_env())
        assert result.returncode == 0, result.stderr
        summary = read_json(out / "summary.json")
        counts.add((summary["n_completed"], summary["rouge1"]))
        ran += 1
    assert ran >= 2 and len(counts) == 1 and next(iter(counts))[0] == 3, "every door gives the same run"
    bad = subprocess.run([sys.executable, "-m", "llmopt", "run", "--limit", "0"], capture_output=True, text=True, cwd=ROOT,
                         env=cli_env())  # fmt: skip
    assert_usage_error(bad, "llmopt run: error:", "--limit")
