"""`recovery snapshot create/list/show/verify/drop` and `recovery restore`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import click

from ..errors import RecoveryError
from ..restore import restore as restore_fn
from ..snapshot import sqlscope
from ..snapshot import stores as snap
from . import render
from .common import Ctx, apply_options, command, confirm, open_conn


@click.group("snapshot")
def snapshot_group() -> None:
    """Save rows before a risky change; list, show, verify and drop snapshots."""


_STORE_HELP = (
    "Where the snapshot is: 'db' (the database store) or a directory "
    "(default: the database, then ./snapshots)."
)


@contextmanager
def _tqdm(c: Ctx, what: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar in bytes on a terminal (none with --quiet or --json)."""
    if c.quiet or c.json or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=what, unit="B", unit_scale=True, leave=False, mininterval=0.5, delay=2.0) as bar:

        def update(n: int) -> None:  # tqdm's update returns a bool, a Progress returns None
            bar.update(n)

        yield update


@command("create", group=snapshot_group)
@click.argument("name")
@click.option("--table", "tables", multiple=True, help="Save rows of this table (repeatable).")
@click.option(
    "--where",
    "wheres",
    multiple=True,
    metavar="SQL",
    help="Only rows where SQL holds: one, or one per --table in the same order.",
)
@click.option(
    "--for-sql",
    "for_sql",
    type=click.Path(dir_okay=False),
    help="Save what the statements of this SQL file could destroy.",
)
@click.option(
    "--store",
    help="'db' (default: tables under the recovery schema) or a "
    "directory (e.g. ./snapshots) that survives the database.",
)
@click.option(
    "--key",
    help="Row key for a table without primary key: unique NOT NULL columns, comma-separated.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="With --for-sql: print the estimated blast radius per statement and stop.",
)
def snapshot_create(
    c: Ctx,
    name: str,
    tables: tuple[str, ...],
    wheres: tuple[str, ...],
    for_sql: str | None,
    store: str | None,
    key: str | None,
    dry_run: bool,
) -> None:
    """Save rows (a table, a WHERE, or what a migration could destroy) into a store."""

    snap.check_name(name)
    if not tables and not for_sql:
        raise RecoveryError("name what to save: --table T [--where SQL], or --for-sql FILE")
    if wheres and not tables:
        raise RecoveryError("--where needs a --table")
    if dry_run and not for_sql:
        raise RecoveryError("--dry-run goes with --for-sql (it prints the blast radius)")
    text = sqlscope.read_sql_file(for_sql) if for_sql else None
    with open_conn(c) as conn:
        specs = snap.table_specs(conn, tables, wheres) if tables else []
        source: dict[str, Any] = {"tables": list(tables), "where": list(wheres)}
        if text is not None:
            stmts, more, source["for_sql"] = sqlscope.plan_for_sql(conn, text, for_sql or "FILE")
            twice = {s.relid for s in specs} & {s.relid for s in more}
            if twice:
                raise RecoveryError("a --table is also saved by --for-sql: name it once")
            specs += more
            if not c.json:
                c.out(render.blast_radius(stmts))
            if dry_run:
                if c.json:
                    c.emit({"dry_run": True, **source["for_sql"]})
                return
        keys = [k.strip() for k in key.split(",")] if key else None
        with _tqdm(c, f"snapshot {name}") as progress:
            info = snap.create(
                conn,
                name,
                specs,
                store=store,
                key=keys,
                source=source,
                schema=c.schema,
                progress=progress,
            )
    if c.json:
        c.emit(info.to_dict())
    else:
        c.out(render.snapshot(info))


def _maybe_conn(c: Ctx, store: str | None) -> Any:
    """A connection, unless a directory store is named and no database is given."""
    import os

    if store not in (None, "db") and not (
        c.db or os.environ.get("RECOVERY_DB_URL") or os.environ.get("DATABASE_URL")
    ):
        # nullcontext, not a contextmanager over an iterator: an error inside the block
        # must reach the command's handler (exit 1), not fail in generator.throw().
        return nullcontext(None)
    return open_conn(c)


@command("list", group=snapshot_group)
@click.option("--store", help=_STORE_HELP)
def snapshot_list(c: Ctx, store: str | None) -> None:
    """List complete snapshots of a store."""

    problems: list[str] = []
    with _maybe_conn(c, store) as conn:
        found = snap.list_snapshots(conn, store=store, schema=c.schema, problems=problems)
    for p in problems:
        click.echo(f"warning: not listed: {p}", err=True)
    if c.json:
        c.emit([i.to_dict() for i in found])
    else:
        c.out(render.snapshot_list(found))


@command("show", group=snapshot_group)
@click.argument("name")
@click.option("--store", help=_STORE_HELP)
def snapshot_show(c: Ctx, name: str, store: str | None) -> None:
    """Show a snapshot: tables, rows, WHERE, key, where it came from."""

    with _maybe_conn(c, store) as conn:
        info = snap.find(conn, name, store=store, schema=c.schema)
    if c.json:
        c.emit(info.manifest)
    else:
        c.out(render.snapshot(info, detail=True))


@command("verify", group=snapshot_group)
@click.argument("name")
@click.option("--store", help=_STORE_HELP)
def snapshot_verify(c: Ctx, name: str, store: str | None) -> None:
    """Re-read every saved table: checksums and row counts (exit 2 if damaged)."""

    with _maybe_conn(c, store) as conn:
        info = snap.find(conn, name, store=store, schema=c.schema)
        res = snap.verify(conn, info, schema=c.schema)
    if c.json:
        c.emit(res.to_dict())
    else:
        c.out(
            f"snapshot {name} is intact: "
            + ", ".join(f"{i['table']} {i['rows']} rows" for i in res.items)
        )


@command("drop", group=snapshot_group)
@click.argument("name")
@click.option("--store", help=_STORE_HELP)
def snapshot_drop(c: Ctx, name: str, store: str | None) -> None:
    """Delete a snapshot and its data."""

    with _maybe_conn(c, store) as conn:
        info = snap.find(conn, name, store=store, schema=c.schema)
        confirm(c, f"Drop snapshot {name} ({info.rows} rows, {info.store})?")
        snap.drop(conn, info, schema=c.schema)
    if c.json:
        c.emit({"dropped": name, "store": info.store})
    else:
        c.out(f"dropped snapshot {name} ({info.store})")


@command("restore")
@click.argument("snapshot")
@click.option(
    "--table", "tables", multiple=True, help="Only this table of the snapshot (repeatable)."
)
@click.option("--store", help=_STORE_HELP)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option(
    "--delete-new",
    is_flag=True,
    help="Also delete rows added since the snapshot inside its WHERE (default: kept and reported).",
)
@apply_options
def restore_cmd(
    c: Ctx,
    snapshot: str,
    tables: tuple[str, ...],
    store: str | None,
    dry_run: bool,
    delete_new: bool,
    lock_timeout: str,
    fire_triggers: bool,
    approval: int | None,
) -> None:
    """Put a snapshot's rows back: changed rows get saved values, deleted rows return."""

    with open_conn(c) as conn:
        info = snap.find(conn, snapshot, store=store, schema=c.schema)
        opts: dict[str, Any] = dict(
            tables=tables,
            delete_new=delete_new,
            fire_triggers=fire_triggers,
            lock_timeout=lock_timeout,
            schema=c.schema,
        )
        if not dry_run and not c.yes:
            plan = restore_fn(conn, info, dry_run=True, **opts)
            c.out(render.restore(plan))
            confirm(c, "Apply this restore?")
        with _tqdm(c, f"restore {snapshot}") as progress:
            report = restore_fn(
                conn, info, dry_run=dry_run, progress=progress, approval=approval, **opts
            )
    if c.json:
        c.emit(report.to_dict())
    else:
        c.out(render.restore(report))
