"""The Colab notebook runs top to bottom as a plain script with the tiny model, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, cli_env


def test_colab_notebook_runs_as_a_script(tmp_path: Path):
    notebook = json.loads((ROOT / "notebooks" / "colab.ipynb").read_text())
    code = "\n\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code")
    script = tmp_path / "colab.py"
    script.write_text(code)
    env = cli_env()
    env.update(
        LLMOPT_NOTEBOOK_MODEL="tiny",
        LLMOPT_NOTEBOOK_DATASET="sample",
        LLMOPT_NOTEBOOK_LIMIT="3",
        LLMOPT_NOTEBOOK_MAX_NEW_TOKENS="8",
        LLMOPT_NOTEBOOK_OUT=str(tmp_path / "out"),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "## Results" in result.stdout and "4bit" in result.stdout
    assert (tmp_path / "out" / "report.md").is_file()
