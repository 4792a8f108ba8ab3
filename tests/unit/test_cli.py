"""The command line: --version, help on every flag with its default, and docs whose commands work.

Every `tunesmith ...` line inside a code block (fenced or indented) of README.md and docs/*.md is parsed by the
real parser (a wrong flag fails here) and the repository files it names must exist; the cheap
ones that need no network (`config`, `plan`, `data preview`) are run and must exit 0.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from tunesmith import __version__
from tunesmith.cli import all_parsers, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = ("config", "plan", "data")
REPO_PREFIXES = ("configs/", "examples/", "bench/", "docs/", "src/", "tests/")


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"tunesmith {__version__}"


def test_every_flag_of_every_command_has_help():
    missing = [
        f"{p.prog} {'/'.join(a.option_strings) or a.dest}"
        for p in all_parsers(build_parser())
        for a in p._actions
        if not a.help and not isinstance(a, argparse._SubParsersAction)
    ]
    assert not missing, missing


def test_help_shows_defaults():
    parsers = {p.prog: p for p in all_parsers(build_parser())}
    generate = parsers["tunesmith generate"].format_help()
    assert "(default: 64)" in generate and "(default: 50)" in generate
    assert "(default: cpu)" in parsers["tunesmith plan"].format_help()


def doc_commands() -> list[tuple[str, str]]:
    """(file:line, command) of every `tunesmith` command in a fenced or indented code block."""
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        inside = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                inside = not inside
                continue
            text = re.sub(r"^\s*(\$ )?", "", line)
            indented = line.startswith("    ")  # a markdown code block by indentation
            if (inside or indented) and text.startswith("tunesmith "):
                command = text.split(" #")[0].split("&&")[0].strip()
                out.append((f"{path.relative_to(ROOT)}:{number}", command))
    return out


COMMANDS = doc_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("where,command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses_and_names_existing_files(where, command, tmp_path, monkeypatch):
    argv = shlex.split(command)[1:]
    args, extra = build_parser().parse_known_args(argv)
    assert all("=" in word for word in extra), f"{where}: unknown arguments {extra}"
    named = [w for w in argv if w.startswith(REPO_PREFIXES)]
    missing = [w for w in named if not (ROOT / w).exists()]
    assert not missing, f"{where}: {missing} do not exist"
    if args.command in RUNNABLE:
        monkeypatch.chdir(ROOT)
        monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
        assert main(argv) == 0, f"{where}: `{command}` failed"
