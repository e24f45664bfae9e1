"""What every command shares: the global options and `Ctx`, the selector options, the
connection and confirmation helpers, and the edge where known errors become exit codes."""

from __future__ import annotations

import functools
import json
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import psycopg

from ..approval import ApprovalPending
from ..db import DEFAULT_SCHEMA, check_schema_name, connect
from ..errors import ConflictError, RecoveryError
from ..selector import Selector
from . import render

F = TypeVar("F", bound=Callable[..., Any])


class _BadInput(click.ClickException):
    """A usage error (unknown option, value of the wrong type): bad input, so exit 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _bad_input(exc: click.UsageError) -> _BadInput:
    where = exc.ctx.command_path if exc.ctx is not None else "recovery"
    return _BadInput(f"{' '.join(exc.format_message().split())} (see `{where} --help`)")


class Group(click.Group):
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
        self.emitted = False  # a JSON document was printed on stdout
        self.quiet = False
        self.yes = False
        self.schema = DEFAULT_SCHEMA
        self.traceback = False

    def out(self, text: str) -> None:
        if not self.quiet and not self.json:
            click.echo(text)

    def emit(self, doc: Any) -> None:
        click.echo(json.dumps(doc, indent=2, default=str))
        self.emitted = True


def global_options(f: F) -> F:
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


def merge(ctx: click.Context, kw: dict[str, Any]) -> Ctx:
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


def _fail(ctx: click.Context, c: Ctx, message: str, code: int) -> None:
    """End a command with an error: one line on stderr and the exit code; with --json,
    also a JSON document on stdout ({"error": ..., "exit_code": ...}), so that a script
    reading stdout always gets one document."""
    if c.json and not c.emitted:  # a command that printed its own document keeps it
        c.emit({"error": message, "exit_code": code})
    click.echo(f"error: {message}", err=True)
    ctx.exit(code)


def command(
    name: str, group: click.Group | None = None, **attrs: Any
) -> Callable[[Callable[..., Any]], click.Command]:
    """A command with the global options, registered on `group` if given (else the caller
    adds it to its group); turn known errors into exit codes."""

    def deco(f: Callable[..., Any]) -> click.Command:
        @functools.wraps(f)
        @click.pass_context
        def wrapper(ctx: click.Context, /, **kw: Any) -> Any:
            c = merge(ctx, kw)
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
                _fail(ctx, c, str(exc), exc.exit_code)
            except psycopg.errors.InsufficientPrivilege as exc:
                if c.traceback:
                    traceback.print_exc()
                _fail(
                    ctx,
                    c,
                    f"permission denied: {exc.diag.message_primary}; "
                    "run as a role with the needed privileges",
                    1,
                )
            except psycopg.Error as exc:
                if c.traceback:
                    traceback.print_exc()
                first = (str(exc).strip().splitlines() or ["database error"])[0]
                _fail(ctx, c, f"database error: {first}", 1)
            except KeyboardInterrupt:
                # Ctrl-C: every write runs in a transaction, which the server rolled
                # back with the interrupted statement; say so instead of click's bare
                # "Aborted!".  A batched undo keeps the batches it committed.
                _fail(
                    ctx,
                    c,
                    "interrupted (Ctrl-C): the transaction in progress was rolled back, "
                    "so nothing of it changed; a batched rollback keeps the batches it "
                    "committed (`recovery operations` shows it, `recovery rollback "
                    "--resume OP` goes on)",
                    1,
                )

        wrapper = global_options(wrapper)
        cmd = click.command(name, cls=click.Command, **attrs)(wrapper)
        if group is not None:
            group.add_command(cmd)
        return cmd

    return deco


def selector_options(f: F) -> F:
    options = [
        click.option(
            "--tag", "tags", multiple=True, help="Changes made with this recovery.tag (repeatable)."
        ),
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
        click.option(
            "--user",
            "users",
            multiple=True,
            help="Changes made by this database user (repeatable).",
        ),
        click.option(
            "--app",
            "apps",
            multiple=True,
            help="Changes made by this application_name (repeatable).",
        ),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def make_selector(kw: dict[str, Any]) -> Selector:
    return Selector(
        tags=tuple(kw.pop("tags")),
        txids=tuple(kw.pop("txids")),
        since=kw.pop("since"),
        until=kw.pop("until"),
        tables=tuple(kw.pop("tables")),
        users=tuple(kw.pop("users")),
        apps=tuple(kw.pop("apps")),
    )


APPROVAL_HELP = (
    "Run under approval request REQ (approved with `recovery approve REQ` by "
    "another database user); without it, an approved request for exactly this "
    "plan is used, else the plan is recorded as a request and refused (exit 3)."
)


# A PostgreSQL time setting as lock_timeout accepts it: a number, optionally with a
# unit (milliseconds without one).  Checked before anything connects, so that a typo
# is one line naming the option, not the server's "invalid value for parameter".
_DURATION = re.compile(r"^\s*\d+(\.\d+)?\s*(us|ms|s|min|h|d)?\s*$")


def check_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """click callback: accept a PostgreSQL duration (5s, 500ms, 2min, 1h; plain = ms)."""
    if value is not None and not _DURATION.match(value):
        raise click.BadParameter(
            f"{value!r} is not a duration: use a number with a unit, such as 5s, 500ms, "
            "2min or 1h (0 waits forever)",
            ctx=ctx,
            param=param,
        )
    return value


def apply_options(f: F) -> F:
    """The options of every command that writes rows back (rollback, restore)."""
    options = [
        click.option(
            "--lock-timeout",
            default="5s",
            show_default=True,
            callback=check_duration,
            help="Give up (nothing changed) when rows stay locked longer than this.",
        ),
        click.option(
            "--fire-triggers",
            is_flag=True,
            help="Let the tables' own triggers fire on restored rows (default: suspended).",
        ),
        click.option("--approval", type=int, metavar="REQ", help=APPROVAL_HELP),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


@contextmanager
def open_conn(c: Ctx) -> Iterator[psycopg.Connection]:
    """The command's connection, its own: what is left open is committed when the command
    succeeds, rolled back when it fails (the library ends only what it opens)."""
    with connect(c.db) as conn:
        yield conn


def confirm(c: Ctx, question: str) -> None:
    if c.yes:
        return
    if not sys.stdin.isatty():
        raise RecoveryError("refusing to change data without --yes: no terminal to ask")
    if not click.confirm(question, default=False):
        raise RecoveryError("cancelled: nothing changed")
