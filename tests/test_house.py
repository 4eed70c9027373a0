"""The house: no import circles, no library module that reaches a command line or parses arguments, imports that run
down the folders, and the walls DESIGN.md names: a report never imports what produces results (the runner, a strategy),
a quality metric never its producers (a strategy, the runner), the shared modules below every folder.

Every import counts, at module level or inside a function (those run too, only later), as read from each module's
syntax tree. The checks are also run on a small package built here with the faults they look for, so that they are
known to fail when they should.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# The doors: `llmopt` (commands/main.py), `python -m llmopt` and the `python -m llmopt.X` entry points.
ENTRY_POINTS = {"run", "sweep", "report", "score", "drift", "loadtest", "batchbench", "roofline", "tiny", "tune", "__main__"}


def modules(package: Path) -> dict[str, Path]:
    root = package.parent
    found = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of the package that `name` imports, anywhere in its file; plus "argparse" if it imports that."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            # `from x import y`: y is a module of its own, or a name defined in x.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            if target == "argparse" or target.startswith("argparse."):
                found.add("argparse")
            # The most specific module of the package the import names (a module, or the package it comes from).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(package: Path) -> dict[str, set[str]]:
    known = modules(package)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in edges:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


# The folders, top to bottom: a module may import its own folder and the folders below it, never one above.
LAYERS = [
    "commands",
    "reports",
    "tuning",
    "sweeps",
    "runner",
    "serving",
    "quality",
    "strategies",
    "measure",
    "documents",
    "models",
]
# Walls inside that order: what a folder must never import even though it lies below.
WALLS = {
    "reports": {"runner", "strategies", "serving", "tuning"},  # reports read result folders (llmopt/results.py), never run
    "quality": {"strategies", "runner", "serving"},  # a metric is arithmetic on what a mode produced
    "strategies": {"runner"},
}


def folder_of(module: str, folders: set[str]) -> str | None:
    """The folder a module lives in (`llmopt.runner.loop` and `llmopt.runner` -> runner); None for a shared
    top-level module (`llmopt.files`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in folders else None


def wrong_way(package: str, edges: dict[str, set[str]], layers: list[str], walls: dict[str, set[str]]) -> list[str]:
    """Imports that run up the folders, cross a wall, or reach a folder from a shared top-level module."""
    found = []
    doors = faces(package, edges)
    folders = {m.split(".")[1] for m in edges if m.startswith(f"{package}.") and m.count(".") > 1}
    for name, targets in edges.items():
        here = folder_of(name, folders)
        for target in targets:
            there = folder_of(target, folders)
            if there is None or there == here or name in doors or target in doors:  # doors: trespasses()
                continue
            if here is None:
                found.append(f"{name} (shared) imports {target}")
            elif here in layers and there in layers and layers.index(there) < layers.index(here):
                found.append(f"{name} imports {target}, a folder above it")
            elif there in walls.get(here, ()):
                found.append(f"{name} imports {target} across a wall")
    return sorted(found)


def faces(package: str, edges: dict[str, set[str]]) -> set[str]:
    """Command modules and entry points: the modules allowed to parse arguments and to import commands."""
    return {m for m in edges if m.startswith(f"{package}.commands")} | {f"{package}.{e}" for e in ENTRY_POINTS}


def trespasses(package: str, edges: dict[str, set[str]]) -> list[str]:
    """Library modules that import argparse, a command module or an entry point."""
    doors = faces(package, edges)
    return sorted(
        f"{name} imports {target}"
        for name, targets in edges.items()
        if name not in doors
        for target in targets
        if target == "argparse" or target in doors
    )


def test_llmopt_has_no_import_circles():
    assert circles(graph(ROOT / "llmopt")) == []


def test_library_modules_never_reach_a_command_line():
    assert trespasses("llmopt", graph(ROOT / "llmopt")) == []


def test_imports_run_down_and_respect_the_walls():
    assert set(LAYERS) == {p.parent.name for p in (ROOT / "llmopt").glob("*/__init__.py")}, "a folder without a layer"
    assert wrong_way("llmopt", graph(ROOT / "llmopt"), LAYERS, WALLS) == []


def test_every_folder_says_what_it_holds():
    for init in sorted((ROOT / "llmopt").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.parent.name}/__init__.py needs a docstring saying what the folder holds"


def test_the_checks_fail_on_what_they_look_for(tmp_path: Path):
    pkg = tmp_path / "pkg"
    (pkg / "commands").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from . import a\n",  # a circle closed inside a function, by a relative import
        "lib.py": "import argparse\n",
        "uses_cli.py": "def f():\n    from pkg.commands import run\n",
        "commands/__init__.py": "",
        "commands/run.py": "import argparse\nfrom pkg import a\n",
        "run.py": "from pkg.commands.run import main\n",
        "shared.py": "from pkg.runner import loop\n",  # a shared module reaching into a folder
        "reports/__init__.py": "",
        "reports/rows.py": "from pkg.runner.records import read_state\n",  # a report reading through the runner
        "quality/__init__.py": "",
        "quality/drift.py": "def f():\n    from pkg.strategies.base import Strategy\n",  # a metric running its producers
        "runner/__init__.py": "",
        "runner/loop.py": "from pkg.reports import rows\n",  # up the folders
        "runner/records.py": "",
        "strategies/__init__.py": "",
        "strategies/base.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    edges = graph(pkg)
    assert circles(edges) == [["pkg.a", "pkg.b"]]
    assert trespasses("pkg", edges) == ["pkg.lib imports argparse", "pkg.uses_cli imports pkg.commands.run"]
    layers = ["commands", "reports", "runner", "quality", "strategies"]
    walls = {"reports": {"runner", "strategies"}, "quality": {"strategies", "runner"}}
    assert wrong_way("pkg", edges, layers, walls) == [
        "pkg.quality.drift imports pkg.strategies.base across a wall",
        "pkg.reports.rows imports pkg.runner.records across a wall",
        "pkg.runner.loop imports pkg.reports.rows, a folder above it",
        "pkg.shared (shared) imports pkg.runner.loop",
    ]
