"""`recovery capture enable/disable/status`."""

from __future__ import annotations

import click

from ..capture import triggers as capture_mod
from ..errors import RecoveryError
from . import render
from .common import Ctx, command, confirm, open_conn


@click.group("capture")
def capture_group() -> None:
    """Turn change capture on or off per table, and see its state."""


@command("enable", group=capture_group)
@click.argument("tables", nargs=-1)
@click.option(
    "--all",
    "all_tables",
    is_flag=True,
    help="Every table with a primary key (tables it leaves out are named, with the reason).",
)
@click.option(
    "--schema",
    "in_schema",
    default="public",
    show_default=True,
    help="With --all: the schema whose tables to capture.",
)
@click.option(
    "--key",
    help="Row key for a table without primary key: unique NOT NULL columns, comma-separated.",
)
def capture_enable(
    c: Ctx, tables: tuple[str, ...], all_tables: bool, in_schema: str, key: str | None
) -> None:
    """Start capturing INSERT, UPDATE, DELETE and TRUNCATE on TABLES."""
    if bool(tables) == all_tables:
        raise RecoveryError("name the tables to capture, or pass --all")
    skipped: list[tuple[str, str]] = []
    with open_conn(c) as conn:
        if all_tables:
            found = capture_mod.all_tables(conn, in_schema)
            skipped = found.skipped
            if not found.tables:
                raise RecoveryError(f"no table with a primary key in schema {in_schema}")
            done = capture_mod.enable(conn, found.tables, schema=c.schema)
        else:
            keys = [k.strip() for k in key.split(",")] if key else None
            done = capture_mod.enable(conn, list(tables), key=keys, schema=c.schema)
    if c.json:
        c.emit({"enabled": done, "skipped": [{"table": t, "reason": r} for t, r in skipped]})
    else:
        for t in done:
            c.out(f"capturing {t}")
    for _t, reason in skipped:
        # Never silent: a table --all leaves out is named, with the reason, on stderr.
        click.echo(f"not captured: {reason}", err=True)


@command("disable", group=capture_group)
@click.argument("tables", nargs=-1)
@click.option("--all", "all_tables", is_flag=True, help="Every captured table.")
def capture_disable(c: Ctx, tables: tuple[str, ...], all_tables: bool) -> None:
    """Stop capturing on TABLES; what was captured is kept.

    Asks first (or needs --yes): a change made while capture is off cannot be undone.
    """
    if bool(tables) == all_tables:
        raise RecoveryError("name the tables, or pass --all")
    # Turning protection off is a change like any other: it asks, and without a
    # terminal it refuses unless --yes says so.
    confirm(
        c,
        f"Stop capturing {'every captured table' if all_tables else ', '.join(tables)}? "
        "Changes made while capture is off cannot be undone.",
    )
    with open_conn(c) as conn:
        done = capture_mod.disable(conn, None if all_tables else list(tables), schema=c.schema)
    if c.json:
        c.emit({"disabled": done})
    else:
        for t in done:
            c.out(f"stopped capturing {t}")


@command("status", group=capture_group)
def capture_status(c: Ctx) -> None:
    """Show every captured table: on, off or stopped (and why), key, journal size."""
    with open_conn(c) as conn:
        states = capture_mod.status(conn, schema=c.schema)
    if c.json:
        c.emit([dict(s.__dict__, state=s.state) for s in states])
    else:
        c.out(render.capture_status(states))
