"""The smaller commands: `init`, `mark`, `guard`, `operations`, `prune`, `demo`."""

from __future__ import annotations

import click

from ..capture import wal
from ..capture.prune import parse_duration
from ..capture.prune import prune as prune_fn
from ..errors import CapExceeded, RecoveryError
from ..guardrails.guard import parse_per_table, run_guarded
from ..marks import create_mark, list_marks
from ..operations import list_operations
from ..schema import init as init_fn
from . import render
from .common import Ctx, command, confirm, open_conn
from .demo import run_demo


@command("init")
def init_cmd(c: Ctx) -> None:
    """Install or upgrade the recovery schema (idempotent)."""
    with open_conn(c) as conn:
        res = init_fn(conn, c.schema)
        with conn.transaction():
            wal_problems = wal.requirements(conn)
    if c.json:
        c.emit(
            dict(
                res.__dict__, wal_capture={"available": not wal_problems, "problems": wal_problems}
            )
        )
        return
    if res.previous_version is None:
        c.out(f"installed schema {res.schema} version {res.version}")
    elif res.previous_version < res.version:
        c.out(f"upgraded schema {res.schema} from {res.previous_version} to {res.version}")
    else:
        c.out(f"schema {res.schema} is up to date (version {res.version})")
    if not res.ddl_follow:
        c.out(
            "note: not a superuser, so no event trigger: after ALTER TABLE on a captured "
            "table, capture stops there until `recovery capture enable` is run again"
        )
    if wal_problems:
        c.out("WAL capture (capture enable --source wal) is not available here:")
        for p in wal_problems:
            c.out(f"  - {p}")
    else:
        c.out("WAL capture (capture enable --source wal) is available here")


@command("mark")
@click.argument("name", required=False)
@click.option("--note", help="What the mark is for (kept with it).")
@click.option("--list", "list_all", is_flag=True, help="List the marks instead.")
def mark_cmd(c: Ctx, name: str | None, note: str | None, list_all: bool) -> None:
    """Record a named point in time, usable as --since NAME or --until NAME."""
    if bool(name) == list_all:
        raise RecoveryError("give a mark NAME, or --list")
    with open_conn(c) as conn:
        if list_all:
            marks = list_marks(conn, schema=c.schema)
            if c.json:
                c.emit([m.to_dict() for m in marks])
            else:
                c.out(render.marks(marks))
            return
        assert name is not None
        m = create_mark(conn, name, note=note, schema=c.schema)
    if c.json:
        c.emit(m.to_dict())
    else:
        c.out(f"mark {m.name} at {m.at}: use --since {m.name} or --until {m.name}")


@command(
    "guard",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--tag", required=True, help="Tag for every write COMMAND makes.")
@click.option(
    "--max-rows",
    type=int,
    help="Abort any transaction of COMMAND that writes "
    "more rows than this (all captured tables together).",
)
@click.option(
    "--max-rows-per-table",
    "per_table",
    multiple=True,
    metavar="TABLE=N",
    help="Abort any transaction that writes more than N rows to TABLE.",
)
@click.option(
    "--table",
    "tables",
    multiple=True,
    help="Make sure these tables are captured (else: every captured table).",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def guard_cmd(
    c: Ctx,
    tag: str,
    max_rows: int | None,
    per_table: tuple[str, ...],
    tables: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with its writes tagged and capped; show what it changed.

    Every libpq client COMMAND starts gets the tag and caps through PGOPTIONS
    (others: SET recovery.tag = '...' and SET recovery.max_rows = N).  Exit code:
    COMMAND's own, or 3 when a cap aborted one of its transactions.
    """
    caps = parse_per_table(per_table)
    res = run_guarded(
        c.db,
        list(command),
        tag=tag,
        max_rows=max_rows,
        max_rows_per_table=caps,
        tables=list(tables),
        schema=c.schema,
    )
    if c.json:
        c.emit(res.to_dict())
    else:
        if res.changes is not None and res.changes.statements:
            c.out(render.changes(res.changes))
        else:
            c.out(f"nothing was captured under tag {tag} during the command")
        c.out(f"\nto undo it: {res.undo_command}")
    if res.cap_hit:
        raise CapExceeded(
            f"a blast-radius cap aborted a transaction of the command (exit code "
            f"{res.exit_code}): nothing that transaction wrote was kept; raise the cap with "
            "--max-rows or --max-rows-per-table if the change really must touch more rows"
        )
    if res.exit_code != 0:
        click.get_current_context().exit(res.exit_code)


@command("operations")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    help="How many, newest first.",
)
def operations_cmd(c: Ctx, limit: int) -> None:
    """List recorded operations: who, when, what, status."""
    with open_conn(c) as conn:
        ops = list_operations(conn, limit=limit, schema=c.schema)
    if c.json:
        c.emit([o.to_dict() for o in ops])
    else:
        c.out(render.operations(ops))


@command("prune")
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    help="Retention period, e.g. 7d, 12h, '30 days'.",
)
def prune_cmd(c: Ctx, older_than: str) -> None:
    """Drop captured changes older than DURATION, whole chunks at a time."""
    parse_duration(older_than)  # bad input is reported as such, before any question
    confirm(c, f"Drop captured changes older than {older_than}?")
    with open_conn(c) as conn:
        res = prune_fn(conn, older_than, schema=c.schema)
    if c.json:
        c.emit(res.to_dict())
    else:
        c.out(
            f"dropped {len(res.dropped_chunks)} chunk(s), {res.dropped_statements} "
            f"statement(s), {res.dropped_bytes} bytes older than {res.cutoff}"
        )


@command("demo")
@click.option("--rows", default=200_000, show_default=True, help="Order rows in the shop.")
@click.option("--keep", is_flag=True, help="Keep the scratch database (with --db).")
def demo_cmd(c: Ctx, rows: int, keep: bool) -> None:
    """The whole story on an embedded PostgreSQL (or a scratch database with --db)."""

    result = run_demo(c.db, rows=rows, keep=keep, echo=None if c.json else c.out)
    if c.json:
        c.emit(result)
    if not result["ok"]:
        raise RecoveryError("the demo's final check failed: see the mismatches above")
