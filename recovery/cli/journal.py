"""`recovery changes` and `recovery diff`: the captured changes a selector picks."""

from __future__ import annotations

from typing import Any

import click

from ..capture.journal import changes as changes_fn
from ..capture.journal import diff as diff_fn
from . import render
from .common import Ctx, command, make_selector, open_conn, selector_options


@command("changes")
@selector_options
def changes_cmd(c: Ctx, **kw: Any) -> None:
    """Count captured changes a selector covers: per table, operation, tag and transaction."""
    sel = make_selector(kw)
    with open_conn(c) as conn:
        res = changes_fn(conn, sel, schema=c.schema)
    if c.json:
        c.emit(res.to_dict())
    else:
        c.out(render.changes(res))


@command("diff")
@selector_options
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Rows shown per table.",
)
def diff_cmd(c: Ctx, limit: int, **kw: Any) -> None:
    """Show changed rows with column-level before/after values."""
    sel = make_selector(kw)
    with open_conn(c) as conn:
        rows = diff_fn(conn, sel, limit=limit, schema=c.schema)
    if c.json:
        c.emit([r.__dict__ for r in rows])
    else:
        c.out(render.diff(rows))
