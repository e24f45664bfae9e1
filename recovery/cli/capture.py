"""`recovery capture enable/disable/status`."""

from __future__ import annotations

import signal
from datetime import datetime, timezone
from typing import Any

import click

from ..capture import stream, wal, walops
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
@click.option(
    "--source",
    type=click.Choice(capture_mod.SOURCES),
    default=None,
    help="How changes are captured: trigger (statement triggers; works everywhere) or wal "
    "(logical decoding: nearly free on the write path; needs wal_level=logical and the "
    "REPLICATION attribute). Default: $RECOVERY_CAPTURE_SOURCE, else trigger. A captured "
    "table moves to the source named, with no gap in its journal.",
)
def capture_enable(
    c: Ctx,
    tables: tuple[str, ...],
    all_tables: bool,
    in_schema: str,
    key: str | None,
    source: str | None,
) -> None:
    """Start capturing INSERT, UPDATE, DELETE and TRUNCATE on TABLES.

    \b
    Examples:
      recovery capture enable orders customers
      recovery capture enable --all --source wal
    """
    if bool(tables) == all_tables:
        raise RecoveryError("name the tables to capture, or pass --all")
    skipped: list[tuple[str, str]] = []
    with open_conn(c) as conn:
        if all_tables:
            found = capture_mod.all_tables(conn, in_schema)
            skipped = found.skipped
            if not found.tables:
                raise RecoveryError(f"no table with a primary key in schema {in_schema}")
            done = capture_mod.enable(conn, found.tables, schema=c.schema, source=source)
        else:
            keys = [k.strip() for k in key.split(",")] if key else None
            done = capture_mod.enable(conn, list(tables), key=keys, schema=c.schema, source=source)
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
    """Show every captured table: on, off or stopped (and why), source, key, journal size;
    and, where tables are captured from the WAL, how far the slot is behind."""
    with open_conn(c) as conn:
        states = capture_mod.status(conn, schema=c.schema)
        slot = None
        with conn.transaction():
            if any(s.enabled and s.source == "wal" for s in states) or wal.slot_exists(
                conn, c.schema
            ):
                slot = wal.slot_state(conn, c.schema)
    if c.json:
        doc: Any = [dict(s.__dict__, state=s.state) for s in states]
        c.emit(doc)
    else:
        c.out(render.capture_status(states))
        if slot is not None:
            c.out(render.slot_state(slot))


@command("follow", group=capture_group)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between two drains of the WAL capture slot.",
)
@click.option(
    "--once", is_flag=True, help="Drain once and exit (what every command does before reading)."
)
@click.option(
    "--poll",
    is_flag=True,
    help="Read the slot with peek every --interval instead of holding a replication "
    "connection (for a role or pooler that cannot open one; the server then decodes "
    "from the slot's restart point on every drain).",
)
def capture_follow(c: Ctx, interval: float, once: bool, poll: bool) -> None:
    """Drain the WAL capture slot into the journal continuously, in the foreground.

    Every command that reads the journal drains first, so this is not needed for
    correctness: it keeps the slot from holding WAL between commands. It holds a
    replication connection (the server decodes each transaction once, as it commits);
    while it runs, other commands wait for it to journal what they need instead of
    reading the slot themselves. Logs each batch that wrote something and the lag;
    stops cleanly on SIGTERM or Ctrl-C (a batch in progress is finished or rolled back
    whole; nothing is lost). Needs the REPLICATION attribute (or superuser).

    \b
    Examples:
      recovery capture follow
      recovery capture follow --interval 0.2
    """
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with open_conn(c) as conn:
            with conn.transaction():
                if not wal.slot_exists(conn, c.schema):
                    raise RecoveryError(
                        "no table is captured from the WAL here: `recovery capture enable "
                        "TABLE --source wal` first"
                    )
            most = 0
            source = (
                walops.follow(conn, schema=c.schema, interval=interval, stop=lambda: stopping)
                if poll or once
                else stream.follow(conn, schema=c.schema, interval=interval, stop=lambda: stopping)
            )
            for result, state in source:
                lag = state.lag_bytes or 0
                most = max(most, lag)
                if result.rows or once:
                    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                    c.out(
                        f"{now} drained {result.rows} row(s) in {result.statements} "
                        f"statement(s) from {result.transactions} transaction(s); "
                        f"lag {lag} bytes"
                    )
                for why in result.problems:
                    click.echo(f"warning: {why}", err=True)
                if once:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
