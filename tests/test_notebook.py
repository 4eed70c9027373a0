"""The Colab notebook runs top to bottom as a plain script with the tiny model, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, cli_env

TOKEN = "hf_notebook_secret_4f1d2c"  # as a Colab secret would set it: it must reach no file


def run_notebook(tmp_path: Path, model: str) -> subprocess.CompletedProcess[str]:
    notebook = json.loads((ROOT / "notebooks" / "colab.ipynb").read_text())
    code = "\n\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code")
    script = tmp_path / "colab.py"
    script.write_text(code)
    env = cli_env()
    env.update(
        LLMOPT_NOTEBOOK_MODEL=model,
        LLMOPT_NOTEBOOK_DATASET="sample",
        LLMOPT_NOTEBOOK_LIMIT="3",
        LLMOPT_NOTEBOOK_MAX_NEW_TOKENS="8",
        LLMOPT_NOTEBOOK_OUT=str(tmp_path / "out"),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        HF_TOKEN=TOKEN,
    )
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_colab_notebook_runs_as_a_script(tmp_path: Path):
    result = run_notebook(tmp_path, "tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "## Results" in result.stdout and "4bit" in result.stdout
    assert (tmp_path / "out" / "report.md").is_file()
    written = "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert TOKEN not in written + result.stdout + result.stderr


def test_a_failed_cell_stops_the_notebook_with_its_reason(tmp_path: Path):
    result = run_notebook(tmp_path, str(tmp_path / "no-such-model"))
    assert result.returncode == 1
    assert "Some cells did not finish" in result.stderr and "- default: failed: exit code 2" in result.stderr
    assert "Traceback" not in result.stderr, "a message, not a crash in the last cell"
