"""Every command line the README and docs/ quote still parses, and the README links every page of docs/.

A quoted line is one in a fenced code block that starts with `llmopt ` or `python -m llmopt.`. Each goes through its
command's own `main`, with the real argument parser; the parser's `parse_args` is wrapped to stop right after it
accepts the arguments, so nothing runs, no model loads and no torch is imported.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from llmopt.commands import common
from llmopt.commands.main import COMMANDS

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


class Parsed(Exception):
    """Raised by the wrapped parse_args once the arguments are accepted: the command goes no further."""


def quoted_commands(page: Path) -> list[tuple[int, str]]:
    """(line number, line) of each llmopt command line inside the page's fenced code blocks."""
    found, fenced = [], False
    lines = page.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced and re.match(r"\s*(llmopt |python -m llmopt\.)", line):
            command, at = line.strip(), number
            while command.endswith("\\") and at < len(lines):  # a line continued as the shell continues it
                command, at = command[:-1] + " " + lines[at].strip(), at + 1
            found.append((number, command))
    return found


def command_of(line: str) -> tuple[str, list[str]]:
    """The subcommand's name and its arguments; a trailing `# comment` is dropped as the shell drops it."""
    words = shlex.split(line, comments=True)
    if words[0] == "llmopt":
        return words[1], words[2:]
    module = words[2].removeprefix("llmopt.")
    assert (ROOT / "llmopt" / f"{module}.py").exists(), f"no module llmopt.{module} for `python -m llmopt.{module}`"
    return module, words[3:]


def parse_only(name: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Hand the arguments to the command as its command line would; "parsed", "ran" or "rejected", and stderr."""
    assert name in COMMANDS, f"unknown command {name!r}"
    command = importlib.import_module(f"llmopt.commands.{name}")
    real = common.Parser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):  # type: ignore[no-untyped-def]
        real(self, argv, namespace)
        raise Parsed

    monkeypatch.setattr(common.Parser, "parse_args", parse_then_stop)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            command.main(args, f"llmopt {name}")
    except Parsed:
        return "parsed", err.getvalue()
    except SystemExit as exc:
        return ("ran" if exc.code == 0 else "rejected"), err.getvalue()
    finally:
        monkeypatch.setattr(common.Parser, "parse_args", real)
    return "ran", err.getvalue()


CASES = [(page, number, line) for page in PAGES for number, line in quoted_commands(page)]


def test_the_pages_quote_commands() -> None:
    """The README and the docs pages do quote command lines, so the test below has something to check."""
    assert any(page.name == "README.md" for page, _, _ in CASES)
    assert sum(page.parent.name == "docs" for page, _, _ in CASES) >= 10


@pytest.mark.parametrize(("page", "number", "line"), CASES, ids=[f"{p.name}:{n}" for p, n, _ in CASES])
def test_quoted_command_parses(page: Path, number: int, line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch_before = "torch" in sys.modules
    name, args = command_of(line)
    outcome, err = parse_only(name, args, monkeypatch)
    # `llmopt roofline --list-gpus` prints its table before any parsing: the one quoted line that legitimately runs.
    allowed = {"parsed", "ran"} if name == "roofline" and "--list-gpus" in args else {"parsed"}
    assert outcome in allowed, f"{page.name}:{number}: `{line}` is refused by its parser: {err.strip()}"
    assert torch_before or "torch" not in sys.modules, f"parsing `{line}` imported torch"


def test_a_wrong_flag_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a flag that does not exist, or a bad value, is rejected by the same path."""
    assert parse_only("run", ["--strategy", "default", "--no-such-flag"], monkeypatch)[0] == "rejected"
    assert parse_only("run", ["--strategy", "default", "--limit", "0"], monkeypatch)[0] == "rejected"
    assert parse_only("sweep", ["experiments/cpu-demo.yaml", "--parallel", "x"], monkeypatch)[0] == "rejected"
    assert parse_only("run", ["--strategy", "default", "--limit", "3"], monkeypatch)[0] == "parsed"


def test_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\(docs/([\w-]+\.md)\)", readme))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"
    assert linked <= pages, f"README links missing pages: {sorted(linked - pages)}"


def test_readme_keeps_the_quickstart() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quickstart and "make test" in quickstart
