"""The registry resolves lazily; importing llmopt or asking for --help never loads torch or transformers."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, cli_env, run_cli

from llmopt import strategies


def test_import_and_help_do_not_import_heavy_libraries():
    code = (
        "import sys, llmopt, llmopt.run, llmopt.score, llmopt.strategies, llmopt.runner.loop, llmopt.commands.main\n"
        "for name in ['llmopt.strategies.hf', 'llmopt.strategies.vllm', 'llmopt.strategies.baseline', 'llmopt.models.tiny']:\n"
        "    __import__(name)\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'bitsandbytes') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "sys.argv = ['llmopt.run', '--help']\n"
        "import llmopt.commands.run as r\n"
        "try:\n    r.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=cli_env())
    assert result.returncode == 0, result.stderr


def test_list_strategies_one_line_each_with_state():
    result = run_cli("llmopt.run", "--list-strategies")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(strategies.REGISTRY)
    by_name = {line.split()[0]: line for line in lines}
    assert by_name["lead"].endswith("[ready]") and by_name["default"].endswith("[ready]")
    assert "pip install" in by_name["gptq"]
    flash = strategies.availability(strategies.resolve("flash-attn"))
    assert by_name["flash-attn"].endswith(f"[{'ready' if flash.ready else flash.reason}]")
    if strategies.cuda_capability() is None:
        assert "needs a CUDA GPU" in by_name["flash-attn"]


def test_every_registered_strategy_resolves_with_a_description():
    for name in strategies.REGISTRY:
        cls = strategies.resolve(name)
        assert cls.name == name and cls.description


def test_every_extra_installs_with_plain_pip():
    """An extra naming a package that needs --no-build-isolation (flash-attn) fails `pip install '.[extra]'`; such a
    package is installed on its own, with the command its strategy prints."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    needs_own_command = {
        req.pip.split()[0]
        for name in strategies.REGISTRY
        for req in strategies.resolve(name).requires
        if "--no-build-isolation" in req.pip
    }
    assert needs_own_command == {"flash-attn"}
    listed = {r.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip() for reqs in extras.values() for r in reqs}
    assert not listed & needs_own_command
    readme = (ROOT / "README.md").read_text()
    assert "pip install flash-attn --no-build-isolation" in readme
