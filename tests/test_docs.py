"""The CLI documents itself, and README's command table agrees with `--help`.

Every command and option has help text; every command is in README's table; every
option of a command appears in its row of the table (or among the global options or
SELECTORS, which the README documents once for all commands).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from recovery.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _commands(
    cmd: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from _commands(cmd.commands[name], (*path, name))


COMMANDS = list(_commands(main))
LEAVES = [(p, c) for p, c in COMMANDS if p and not isinstance(c, click.Group)]


def _rows() -> list[str]:
    """The first cell of every row of README's command table."""
    start = README.index("| command | what it does |")
    end = README.index("\n\n", start)
    return [line.split("` |")[0] for line in README[start:end].splitlines()[2:]]


def _long_options(cmd: click.Command) -> list[str]:
    return [
        o for p in cmd.params if isinstance(p, click.Option) for o in p.opts if o.startswith("--")
    ]


GLOBAL = set(_long_options(main))
SELECTORS = README[README.index("SELECTORS: ") :].split("\n\n")[0]


@pytest.mark.parametrize("path", [" ".join(p) or "recovery" for p, _ in COMMANDS])
def test_every_command_and_option_has_help(path):
    cmd = dict((" ".join(p) or "recovery", c) for p, c in COMMANDS)[path]
    assert (cmd.help or "").strip(), f"{path} has no help text"
    for p in cmd.params:
        if isinstance(p, click.Option):
            assert (p.help or "").strip(), f"{path} {p.opts[0]} has no help text"


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in LEAVES])
def test_readme_table_documents_every_command_and_option(path):
    words = path.split()
    group, name = (words[0], words[-1]) if len(words) > 1 else (None, words[0])
    if group:
        # `recovery snapshot list \| show NAME \| ...`: one row may hold a group's commands.
        rows = [
            r
            for r in _rows()
            if r.startswith(f"| `recovery {group} ")
            and re.search(rf"(`recovery {group} |\\\| ){name}\b", r)
        ]
    else:
        rows = [r for r in _rows() if re.match(rf"\| `recovery {name}\b", r)]
    assert rows, f"README's command table has no row for `recovery {path}`"
    cmd = dict((" ".join(p), c) for p, c in LEAVES)[path]
    for opt in _long_options(cmd):
        if opt in GLOBAL or opt == "--help":
            continue
        assert any(opt in r for r in rows) or f"`{opt}" in SELECTORS, (
            f"`recovery {path} {opt}` is in --help but not in README's command table"
        )


def test_readme_table_names_no_command_that_does_not_exist():
    known = {" ".join(p) for p, _ in COMMANDS}
    for row in _rows():
        m = re.match(r"\| `recovery ([a-z]+(?: [a-z]+)?)", row)
        assert m, row
        first = m.group(1)
        assert first in known or first.split()[0] in known, f"README names `recovery {first}`"
