"""The `recovery` command line: a thin layer over the library functions."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from .. import approval as approval_mod
from ..approval import ApprovalPending
from ..capture import triggers as capture_mod
from ..capture.journal import changes as changes_fn
from ..capture.journal import diff as diff_fn
from ..capture.prune import parse_duration
from ..capture.prune import prune as prune_fn
from ..db import DEFAULT_SCHEMA, check_schema_name, connect
from ..errors import CapExceeded, ConflictError, RecoveryError
from ..guardrails.guard import parse_per_table, run_guarded
from ..marks import create_mark, list_marks
from ..operations import list_operations
from ..restore import restore as restore_fn
from ..runbook import engine as rbm
from ..schema import init as init_fn
from ..selector import Selector
from ..snapshot import sqlscope
from ..snapshot import stores as snap
from ..text import table
from ..undo.engine import resume_rollback
from ..undo.engine import rollback as rollback_fn
from . import render
from .demo import run_demo

F = TypeVar("F", bound=Callable[..., Any])


class _BadInput(click.ClickException):
    """A usage error (unknown option, value of the wrong type): bad input, so exit 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _bad_input(exc: click.UsageError) -> _BadInput:
    where = exc.ctx.command_path if exc.ctx is not None else "recovery"
    return _BadInput(f"{' '.join(exc.format_message().split())} (see `{where} --help`)")


class _Group(click.Group):
    """A group whose usage errors follow the contract: `error: ...` on one line, exit 1.

    (click's own are several lines and exit 2, which here means "refused: conflicts".)
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `recovery`: show the help
                raise
            raise _bad_input(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            raise _bad_input(exc) from None


class Ctx:
    """Global options, from the group or the command (the command's win)."""

    def __init__(self) -> None:
        self.db: str | None = None
        self.json = False
        self.quiet = False
        self.yes = False
        self.schema = DEFAULT_SCHEMA
        self.traceback = False

    def out(self, text: str) -> None:
        if not self.quiet and not self.json:
            click.echo(text)

    def emit(self, doc: Any) -> None:
        click.echo(json.dumps(doc, indent=2, default=str))


def _global_options(f: F) -> F:
    options = [
        click.option(
            "--db",
            "db",
            metavar="URL",
            help="Database URL (else RECOVERY_DB_URL, then DATABASE_URL).",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            default=None,
            help="Print one JSON document on stdout.",
        ),
        click.option("--quiet", is_flag=True, default=None, help="Print nothing but errors."),
        click.option("--yes", is_flag=True, default=None, help="Do not ask before changing data."),
        click.option(
            "--schema-name",
            "schema_name",
            metavar="NAME",
            help=f"Recovery schema (default {DEFAULT_SCHEMA}).",
        ),
        click.option(
            "--traceback",
            "show_tb",
            is_flag=True,
            default=None,
            help="Show the full stack on errors.",
        ),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _merge(ctx: click.Context, kw: dict[str, Any]) -> Ctx:
    c: Ctx = ctx.find_root().obj or Ctx()
    for key, attr in (
        ("db", "db"),
        ("as_json", "json"),
        ("quiet", "quiet"),
        ("yes", "yes"),
        ("schema_name", "schema"),
        ("show_tb", "traceback"),
    ):
        value = kw.pop(key, None)
        if value is not None:
            setattr(c, attr, value)
    try:
        check_schema_name(c.schema)
    except RecoveryError as exc:
        raise _BadInput(str(exc)) from None
    return c


def command(group: click.Group, name: str, **attrs: Any) -> Callable[[F], F]:
    """Register a command with the global options; turn known errors into exit codes."""

    def deco(f: F) -> F:
        @functools.wraps(f)
        @click.pass_context
        def wrapper(ctx: click.Context, /, **kw: Any) -> Any:
            c = _merge(ctx, kw)
            try:
                return f(c, **kw)
            except ApprovalPending as exc:
                if c.json:
                    c.emit(
                        {"status": "approval pending", "approval": exc.req_id, "error": str(exc)}
                    )
                click.echo(f"error: {exc}", err=True)
                ctx.exit(exc.exit_code)
            except ConflictError as exc:
                if exc.report is not None and hasattr(exc.report, "to_dict"):
                    if c.json:
                        c.emit(exc.report.to_dict())
                    elif not c.quiet:
                        click.echo(render.any_report(exc.report), err=True)
                click.echo(f"error: {exc}", err=True)
                ctx.exit(exc.exit_code)
            except RecoveryError as exc:
                if c.traceback:
                    traceback.print_exc()
                click.echo(f"error: {exc}", err=True)
                ctx.exit(exc.exit_code)
            except psycopg.errors.InsufficientPrivilege as exc:
                if c.traceback:
                    traceback.print_exc()
                click.echo(
                    f"error: permission denied: {exc.diag.message_primary}; "
                    "run as a role with the needed privileges",
                    err=True,
                )
                ctx.exit(1)
            except psycopg.Error as exc:
                if c.traceback:
                    traceback.print_exc()
                first = (str(exc).strip().splitlines() or ["database error"])[0]
                click.echo(f"error: database error: {first}", err=True)
                ctx.exit(1)

        wrapper = _global_options(wrapper)
        # click returns a Command, not F: callers only register it, never call it as F
        return group.command(name, **attrs)(wrapper)  # type: ignore[return-value]

    return deco


def selector_options(f: F) -> F:
    options = [
        click.option("--tag", "tags", multiple=True, help="Changes made with this recovery.tag."),
        click.option(
            "--txid",
            "txids",
            multiple=True,
            type=int,
            help="Changes of this transaction id (repeatable).",
        ),
        click.option("--since", help="Changes made at or after this time or mark."),
        click.option("--until", help="Changes made before this time or mark."),
        click.option(
            "--table", "tables", multiple=True, help="Changes to this table (repeatable)."
        ),
        click.option("--user", "users", multiple=True, help="Changes made by this database user."),
        click.option("--app", "apps", multiple=True, help="Changes made by this application_name."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _selector(kw: dict[str, Any]) -> Selector:
    return Selector(
        tags=tuple(kw.pop("tags")),
        txids=tuple(kw.pop("txids")),
        since=kw.pop("since"),
        until=kw.pop("until"),
        tables=tuple(kw.pop("tables")),
        users=tuple(kw.pop("users")),
        apps=tuple(kw.pop("apps")),
    )


_APPROVAL_HELP = (
    "Run under approval request REQ (approved with `recovery approve REQ` by "
    "another database user); without it, an approved request for exactly this "
    "plan is used, else the plan is recorded as a request and refused (exit 3)."
)


@contextmanager
def _conn(c: Ctx) -> Iterator[psycopg.Connection]:
    """The command's connection, its own: what is left open is committed when the command
    succeeds, rolled back when it fails (the library ends only what it opens)."""
    with connect(c.db) as conn:
        yield conn


def _confirm(c: Ctx, question: str) -> None:
    if c.yes:
        return
    if not sys.stdin.isatty():
        raise RecoveryError("refusing to change data without --yes: no terminal to ask")
    if not click.confirm(question, default=False):
        raise RecoveryError("cancelled: nothing changed")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recovery")
@_global_options
@click.pass_context
def main(ctx: click.Context, /, **kw: Any) -> None:
    """Undo a bad deploy's data damage on PostgreSQL: capture, selective undo, guardrails.

    Exit codes: 0 done; 1 error, nothing changed; 2 refused because of conflicts;
    3 refused because approval is needed or a cap was hit.
    """
    ctx.obj = Ctx()
    _merge(ctx, kw)


@command(main, "init")
def init_cmd(c: Ctx) -> None:
    """Install or upgrade the recovery schema (idempotent)."""
    with _conn(c) as conn:
        res = init_fn(conn, c.schema)
    if c.json:
        c.emit(res.__dict__)
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


@main.group("capture")
def capture_group() -> None:
    """Turn change capture on or off per table, and see its state."""


@command(capture_group, "enable")
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
    with _conn(c) as conn:
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


@command(capture_group, "disable")
@click.argument("tables", nargs=-1)
@click.option("--all", "all_tables", is_flag=True, help="Every captured table.")
def capture_disable(c: Ctx, tables: tuple[str, ...], all_tables: bool) -> None:
    """Stop capturing on TABLES; what was captured is kept."""
    if bool(tables) == all_tables:
        raise RecoveryError("name the tables, or pass --all")
    with _conn(c) as conn:
        done = capture_mod.disable(conn, None if all_tables else list(tables), schema=c.schema)
    if c.json:
        c.emit({"disabled": done})
    else:
        for t in done:
            c.out(f"stopped capturing {t}")


@command(capture_group, "status")
def capture_status(c: Ctx) -> None:
    """Show every captured table: on, off or stopped (and why), key, journal size."""
    with _conn(c) as conn:
        states = capture_mod.status(conn, schema=c.schema)
    if c.json:
        c.emit([dict(s.__dict__, state=s.state) for s in states])
    else:
        c.out(render.capture_status(states))


@command(main, "changes")
@selector_options
def changes_cmd(c: Ctx, **kw: Any) -> None:
    """Count captured changes a selector covers: per table, operation, tag and transaction."""
    sel = _selector(kw)
    with _conn(c) as conn:
        res = changes_fn(conn, sel, schema=c.schema)
    if c.json:
        c.emit(res.to_dict())
    else:
        c.out(render.changes(res))


@command(main, "diff")
@selector_options
@click.option("--limit", default=20, show_default=True, help="Rows shown per table.")
def diff_cmd(c: Ctx, limit: int, **kw: Any) -> None:
    """Show changed rows with column-level before/after values."""
    sel = _selector(kw)
    with _conn(c) as conn:
        rows = diff_fn(conn, sel, limit=limit, schema=c.schema)
    if c.json:
        c.emit([r.__dict__ for r in rows])
    else:
        c.out(render.diff(rows))


@command(main, "rollback")
@selector_options
@click.option(
    "--on-conflict",
    type=click.Choice(["fail", "skip", "overwrite"]),
    default="fail",
    show_default=True,
    help="fail: change nothing (exit 2); skip: undo everything "
    "else; overwrite: undo conflicting rows too.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option(
    "--sql",
    "sql_file",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the exact SQL to this file.",
)
@click.option("--batch-size", type=int, help="Commit every N rows; resumable with --resume.")
@click.option(
    "--resume",
    "resume_op",
    type=int,
    metavar="OP",
    help="Continue batched undo operation OP after an interruption.",
)
@click.option(
    "--lock-timeout",
    default="5s",
    show_default=True,
    help="Give up (nothing changed) when rows stay locked longer than this.",
)
@click.option(
    "--fire-triggers",
    is_flag=True,
    help="Let the tables' own triggers fire on restored rows (default: suspended).",
)
@click.option("--approval", type=int, metavar="REQ", help=_APPROVAL_HELP)
def rollback_cmd(
    c: Ctx,
    on_conflict: str,
    dry_run: bool,
    sql_file: str | None,
    batch_size: int | None,
    resume_op: int | None,
    lock_timeout: str,
    fire_triggers: bool,
    approval: int | None,
    **kw: Any,
) -> None:
    """Undo the selected changes, keeping every later legitimate write."""
    sel = _selector(kw)
    with _conn(c) as conn:
        if resume_op is not None:
            if not sel.is_empty():
                raise RecoveryError("--resume takes no selector: the operation has its own")
            if dry_run or sql_file or batch_size is not None or approval is not None:
                raise RecoveryError(
                    "--resume continues the saved plan with its own batch size (approved when "
                    "it started): it takes no --dry-run, --sql, --batch-size or --approval"
                )
            _confirm(c, f"Resume undo operation {resume_op}?")
            report = resume_rollback(
                conn,
                resume_op,
                on_conflict=on_conflict if on_conflict != "fail" else None,
                schema=c.schema,
            )
        else:
            sql_out: list[str] | None = [] if sql_file else None
            if not dry_run and not c.yes:
                plan = rollback_fn(
                    conn,
                    sel,
                    on_conflict=on_conflict,
                    dry_run=True,
                    lock_timeout=lock_timeout,
                    fire_triggers=fire_triggers,
                    schema=c.schema,
                )
                c.out(render.rollback(plan))
                _confirm(c, "Apply this undo?")
            report = rollback_fn(
                conn,
                sel,
                on_conflict=on_conflict,
                dry_run=dry_run,
                batch_size=batch_size,
                lock_timeout=lock_timeout,
                fire_triggers=fire_triggers,
                sql_out=sql_out,
                schema=c.schema,
                approval=approval,
            )
            if sql_file and sql_out is not None:
                Path(sql_file).write_text("\n".join(sql_out) + "\n")
    if c.json:
        c.emit(report.to_dict())
    else:
        c.out(render.rollback(report))


@command(main, "approve")
@click.argument("req", type=int, required=False)
@click.option(
    "--list",
    "list_all",
    is_flag=True,
    help="List the open (pending and approved) requests instead.",
)
@click.option(
    "--refuse", is_flag=True, help="Refuse the request: it can then be neither approved nor used."
)
def approve_cmd(c: Ctx, req: int | None, list_all: bool, refuse: bool) -> None:
    """Approve (or refuse) large operation REQ that another database user requested.

    The approval is recorded under the database user this command connects as, for
    the exact plan shown; the requester then runs the same command again.
    """
    if (req is None) != list_all or (list_all and refuse):
        raise RecoveryError("give a request number REQ (with --refuse to refuse it), or --list")
    with _conn(c) as conn:
        if list_all:
            reqs = approval_mod.list_requests(conn, c.schema, status=approval_mod.OPEN)
            if c.json:
                c.emit([r.to_dict() for r in reqs])
            else:
                c.out(render.approval_requests(reqs))
            return
        assert req is not None
        current = approval_mod.get(conn, req, c.schema)
        c.out(render.approval_request(current))
        # fetchone() is typed Optional; a SELECT without FROM returns one row
        me = conn.execute("SELECT session_user").fetchone()[0]  # type: ignore[index]
        conn.rollback()  # not open while the question waits; approve() then commits its own
        _confirm(c, f"{'Refuse' if refuse else 'Approve'} request {req} as database user {me}?")
        done = approval_mod.approve(conn, req, c.schema, refuse=refuse)
    if c.json:
        c.emit(done.to_dict())
    elif refuse:
        c.out(f"refused approval request {req} as {me}")
    elif done.status == "approved":
        c.out(
            f"approved request {req} as {me}: {done.requested_by} can now run the same "
            f"command again (or with --approval {req})"
        )
    else:
        c.out(
            f"recorded the approval of request {req} by {me}: {len(done.approved_by)} of "
            f"{done.required} needed, still {done.status}"
        )


@command(main, "mark")
@click.argument("name", required=False)
@click.option("--note", help="What the mark is for (kept with it).")
@click.option("--list", "list_all", is_flag=True, help="List the marks instead.")
def mark_cmd(c: Ctx, name: str | None, note: str | None, list_all: bool) -> None:
    """Record a named point in time, usable as --since NAME or --until NAME."""
    if bool(name) == list_all:
        raise RecoveryError("give a mark NAME, or --list")
    with _conn(c) as conn:
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
    main,
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


@command(main, "operations")
@click.option("--limit", default=50, show_default=True, help="How many, newest first.")
def operations_cmd(c: Ctx, limit: int) -> None:
    """List recorded operations: who, when, what, status."""
    with _conn(c) as conn:
        ops = list_operations(conn, limit=limit, schema=c.schema)
    if c.json:
        c.emit([o.to_dict() for o in ops])
    else:
        c.out(render.operations(ops))


@command(main, "prune")
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    help="Retention period, e.g. 7d, 12h, '30 days'.",
)
def prune_cmd(c: Ctx, older_than: str) -> None:
    """Drop captured changes older than DURATION, whole chunks at a time."""
    parse_duration(older_than)  # bad input is reported as such, before any question
    _confirm(c, f"Drop captured changes older than {older_than}?")
    with _conn(c) as conn:
        res = prune_fn(conn, older_than, schema=c.schema)
    if c.json:
        c.emit(res.to_dict())
    else:
        c.out(
            f"dropped {len(res.dropped_chunks)} chunk(s), {res.dropped_statements} "
            f"statement(s), {res.dropped_bytes} bytes older than {res.cutoff}"
        )


@main.group("snapshot")
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


@command(snapshot_group, "create")
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
    text = None
    if for_sql:
        try:
            text = Path(for_sql).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise RecoveryError(f"cannot read {for_sql}: {exc}") from None
    with _conn(c) as conn:
        specs = snap.table_specs(conn, tables, wheres) if tables else []
        source: dict[str, Any] = {"tables": list(tables), "where": list(wheres)}
        if text is not None:
            stmts = sqlscope.analyze(conn, text, source=for_sql or "FILE")
            sqlscope.estimate(conn, stmts)
            more = snap.specs_for_sql(stmts)
            twice = {s.relid for s in specs} & {s.relid for s in more}
            if twice:
                raise RecoveryError("a --table is also saved by --for-sql: name it once")
            specs += more
            source["for_sql"] = {
                "file": for_sql,
                "statements": [
                    {
                        "number": s.number,
                        "line": s.line,
                        "kind": s.kind,
                        "text": s.text,
                        "notes": s.notes,
                        "est_rows": s.est_rows,
                        "est_bytes": s.est_bytes,
                        "targets": [
                            {
                                "table": f"{t.schema}.{t.table}",
                                "bounded": t.bounded,
                                "reason": t.reason,
                                "columns": t.columns,
                            }
                            for t in s.targets
                        ],
                    }
                    for s in stmts
                ],
            }
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
    return _conn(c)


@command(snapshot_group, "list")
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


@command(snapshot_group, "show")
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


@command(snapshot_group, "verify")
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


@command(snapshot_group, "drop")
@click.argument("name")
@click.option("--store", help=_STORE_HELP)
def snapshot_drop(c: Ctx, name: str, store: str | None) -> None:
    """Delete a snapshot and its data."""

    with _maybe_conn(c, store) as conn:
        info = snap.find(conn, name, store=store, schema=c.schema)
        _confirm(c, f"Drop snapshot {name} ({info.rows} rows, {info.store})?")
        snap.drop(conn, info, schema=c.schema)
    if c.json:
        c.emit({"dropped": name, "store": info.store})
    else:
        c.out(f"dropped snapshot {name} ({info.store})")


@command(main, "restore")
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
@click.option(
    "--lock-timeout",
    default="5s",
    show_default=True,
    help="Give up (nothing changed) when rows stay locked longer than this.",
)
@click.option(
    "--fire-triggers",
    is_flag=True,
    help="Let the tables' own triggers fire on restored rows (default: suspended).",
)
@click.option("--approval", type=int, metavar="REQ", help=_APPROVAL_HELP)
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

    with _conn(c) as conn:
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
            _confirm(c, "Apply this restore?")
        with _tqdm(c, f"restore {snapshot}") as progress:
            report = restore_fn(
                conn, info, dry_run=dry_run, progress=progress, approval=approval, **opts
            )
    if c.json:
        c.emit(report.to_dict())
    else:
        c.out(render.restore(report))


@main.group("runbook")
def runbook_group() -> None:
    """Run incident runbooks (runbooks/*.yaml): list, validate, run, resume."""


_REPORT_DIR_HELP = (
    "Write the run's report (Markdown, JSON, HTML) into DIR/run-ID/ (default ./runbook-reports)."
)


def _runbook_errors(errors: list[str]) -> None:
    """Every problem of a runbook on its own line, `error: FILE:LINE: ...`; exit 1."""
    for line in errors[:-1]:
        click.echo(f"error: {line}", err=True)
    raise RecoveryError(errors[-1])


def _runbook_result(c: Ctx, res: Any) -> None:
    if c.json:
        c.emit(res.to_dict())
    if res.report:
        c.out(f"report: {res.report}")
    if res.status == "done":
        c.out(f"run {res.run_id} ({res.name}) is done" + (" (dry run)" if res.dry_run else ""))
    elif res.exit_code == 0:
        c.out(res.message)  # paused: resume continues
    else:
        click.echo(res.message if res.status == "waiting" else f"error: {res.message}", err=True)
        click.get_current_context().exit(res.exit_code)


@command(runbook_group, "list")
@click.option(
    "--dir",
    "directory",
    default="runbooks",
    show_default=True,
    help="Directory of runbook files (*.yaml).",
)
@click.option("--runs", is_flag=True, help="List recent runs recorded in the database instead.")
@click.option("--limit", default=20, show_default=True, help="With --runs: how many, newest first.")
def runbook_list(c: Ctx, directory: str, runs: bool, limit: int) -> None:
    """List runbooks (name, description, parameters), or recent runs with --runs."""

    if runs:
        with _conn(c) as conn:
            found = rbm.list_runs(conn, limit=limit, schema=c.schema)
        if c.json:
            c.emit(found)
        else:
            c.out(
                table(
                    ["run", "runbook", "status", "at step", "dry run", "by", "started", "error"],
                    [
                        [
                            r["run_id"],
                            r["name"],
                            r["status"],
                            r["at_step"] or "",
                            "yes" if r["dry_run"] else "",
                            r["started_by"],
                            r["started_at"][:19],
                            r["error"] or "",
                        ]
                        for r in found
                    ],
                )
                if found
                else "no runbook run recorded"
            )
        return
    books = rbm.list_runbooks(directory)
    if c.json:
        c.emit(books)
        return
    for b in books:
        if "error" in b:
            c.out(f"{b['file']}: INVALID: {b['error']}\n")
            continue
        c.out(f"{b['name']} ({b['file']})\n  {b['description'].strip()}")
        for name, p in b["parameters"].items():
            default = (
                "required"
                if p["required"]
                else "optional"
                if p["default"] is None
                else f"default {p['default']!r}"
            )
            c.out(
                f"  --param {name}=<{p['type']}>  {default}"
                + (f": {p['description']}" if p["description"] else "")
            )
        c.out("")
    if not books:
        c.out(f"no runbook (*.yaml) in {directory}")


@command(runbook_group, "validate")
@click.argument("file", type=click.Path(dir_okay=False))
def runbook_validate(c: Ctx, file: str) -> None:
    """Check a runbook file: every problem with its line and a fix (exit 1 if any)."""

    try:
        rb = rbm.load(file)
    except rbm.RunbookInvalid as exc:
        if c.json:
            c.emit({"file": file, "valid": False, "errors": exc.errors})
        _runbook_errors(exc.errors)
    if c.json:
        c.emit(
            {
                "file": file,
                "valid": True,
                "name": rb.name,
                "parameters": list(rb.params),
                "steps": [{"id": s.id, "kind": s.kind} for s in rb.steps],
            }
        )
    else:
        c.out(
            f"{file}: runbook {rb.name} is valid: {len(rb.params)} parameter(s), "
            f"{len(rb.steps)} step(s)"
        )


@command(runbook_group, "run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="K=V",
    help="Value of a runbook parameter (repeatable).",
)
@click.option(
    "--dry-run", is_flag=True, help="Run only the read-only steps; show what the others would do."
)
@click.option("--report-dir", metavar="DIR", help=_REPORT_DIR_HELP)
def runbook_run(
    c: Ctx, file: str, params: tuple[str, ...], dry_run: bool, report_dir: str | None
) -> None:
    """Run a runbook's steps in order, unattended: no prompt (large plans wait for an
    approval step); exit 0 done, 1 error, 2 a check failed, 3 waiting for approval."""

    try:
        rb = rbm.load(file)
    except rbm.RunbookInvalid as exc:
        _runbook_errors(exc.errors)
    values = rbm.bind_params(rb, rbm.parse_param_args(params))
    with _conn(c) as conn:
        res = rbm.run(
            conn, rb, values, dry_run=dry_run, schema=c.schema, echo=c.out, report_dir=report_dir
        )
    _runbook_result(c, res)


@command(runbook_group, "resume")
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--report-dir", metavar="DIR", help=_REPORT_DIR_HELP)
def runbook_resume(c: Ctx, run_id: int, report_dir: str | None) -> None:
    """Continue run RUN from its first unfinished step; finished steps never run again."""

    with _conn(c) as conn:
        res = rbm.resume(conn, run_id, schema=c.schema, echo=c.out, report_dir=report_dir)
    _runbook_result(c, res)


@command(main, "demo")
@click.option("--rows", default=200_000, show_default=True, help="Order rows in the shop.")
@click.option("--keep", is_flag=True, help="Keep the scratch database (with --db).")
def demo_cmd(c: Ctx, rows: int, keep: bool) -> None:
    """The whole story on an embedded PostgreSQL (or a scratch database with --db)."""

    result = run_demo(c.db, rows=rows, keep=keep, echo=None if c.json else c.out)
    if c.json:
        c.emit(result)
    if not result["ok"]:
        raise RecoveryError("the demo's final check failed: see the mismatches above")


if __name__ == "__main__":  # pragma: no cover
    main()
