"""Guardrails for risky writes: tag every write of a command, cap its blast radius.

`run_guarded()` is `recovery guard -- COMMAND`: every libpq connection the command
opens carries the tag and the caps through PGOPTIONS, and the capture hooks enforce
the caps inside PostgreSQL (the writing transaction aborts; nothing it wrote stays).
`guard()` does the same for a block of Python code using psycopg or SQLAlchemy.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import psycopg
from psycopg import sql

from ..capture.journal import ChangesSummary, changes
from ..capture.triggers import enable
from ..db import DEFAULT_SCHEMA, connect, resolve_table, resolve_url
from ..errors import RecoveryError
from ..schema import require_schema
from ..selector import Selector

# Safe inside PGOPTIONS without quoting: no space, quote or backslash.
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,99}$")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
CAP_MESSAGE = "blast-radius cap hit"


def check_tag(tag: str) -> str:
    """Validate a tag for use in PGOPTIONS; return it."""
    if not _TAG.match(tag):
        raise RecoveryError(
            f"tag {tag!r} cannot be passed safely to clients: use letters, digits and "
            ". _ : / @ + - (no spaces or quotes, at most 100 characters)"
        )
    return tag


def check_caps(max_rows: int | None, per_table: Mapping[str, int]) -> str:
    """Validate caps; return the recovery.max_rows_per_table value ('' when none)."""
    if max_rows is not None and max_rows < 0:
        raise RecoveryError(f"--max-rows {max_rows}: a cap is a number of rows, 0 or more")
    for table, n in per_table.items():
        if not _TABLE.match(table):
            raise RecoveryError(
                f"--max-rows-per-table {table!r}: name a table as TABLE or SCHEMA.TABLE "
                "(plain lower-case names)"
            )
        if n < 0:
            raise RecoveryError(f"--max-rows-per-table {table}={n}: a cap is 0 or more rows")
    return ",".join(f"{t}={n}" for t, n in per_table.items())


def parse_per_table(items: Sequence[str]) -> dict[str, int]:
    """Parse `TABLE=N` items (from --max-rows-per-table)."""
    out: dict[str, int] = {}
    for item in items:
        table, sep, n = item.partition("=")
        if not sep or not re.fullmatch(r"-?\d+", n.strip()):
            raise RecoveryError(f"--max-rows-per-table {item!r}: write it as TABLE=N")
        out[table.strip()] = int(n)
    check_caps(None, out)
    return out


def settings(tag: str, max_rows: int | None, per_table: Mapping[str, int]) -> dict[str, str]:
    """The session settings that tag and cap a connection."""
    out = {"recovery.tag": check_tag(tag)}
    per = check_caps(max_rows, per_table)
    if max_rows is not None:
        out["recovery.max_rows"] = str(max_rows)
    if per:
        out["recovery.max_rows_per_table"] = per
    return out


@dataclass
class GuardResult:
    tag: str
    started_at: str
    exit_code: int
    cap_hit: bool
    changes: ChangesSummary | None
    undo_command: str
    command: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "started_at": self.started_at,
            "exit_code": self.exit_code,
            "cap_hit": self.cap_hit,
            "command": self.command,
            "changes": self.changes.to_dict() if self.changes else None,
            "undo_command": self.undo_command,
        }


def _captured_tables(conn: psycopg.Connection, schema: str) -> set[str]:
    """Names (schema.table) of the tables under capture now."""
    require_schema(conn, schema)
    return {
        r[0]
        for r in conn.execute(
            sql.SQL(
                "SELECT schema_name || '.' || table_name FROM {}.captured WHERE enabled"
            ).format(sql.Identifier(schema))
        )
    }


def _check_cap_tables(conn: psycopg.Connection, per_table: Mapping[str, int], schema: str) -> None:
    """A per-table cap must name a captured table, or it would silently cap nothing."""
    captured = _captured_tables(conn, schema)
    for name in per_table:
        _relid, nsp, rel = resolve_table(conn, name)
        if f"{nsp}.{rel}" not in captured:
            raise RecoveryError(
                f"--max-rows-per-table {name}: {nsp}.{rel} is not a captured table (a "
                "partition counts under its captured parent): name the captured table, or "
                "capture it with --table"
            )


def _prepare(
    conn: psycopg.Connection, tables: Sequence[str], per_table: Mapping[str, int], schema: str
) -> str:
    """Make sure capture is on (for `tables`, or some table at all); return the start time."""
    if tables:
        enable(conn, list(tables), schema=schema)
    with conn.transaction():
        if not tables and not _captured_tables(conn, schema):
            raise RecoveryError(
                "no table is captured: name the tables with --table, or run `recovery capture "
                "enable` first"
            )
        _check_cap_tables(conn, per_table, schema)
        started = conn.execute("SELECT clock_timestamp()::text").fetchone()
    assert started is not None
    return str(started[0])


def _report(url: str, tag: str, started: str, schema: str) -> ChangesSummary | None:
    """What the tag changed since `started`, over a new connection (the command may have
    run for hours: a connection opened before it may be gone)."""
    try:
        with connect(url) as conn:
            return changes(conn, Selector(tags=(tag,), since=started), schema=schema)
    except RecoveryError:  # nothing captured under the tag, or the database unreachable
        return None


def undo_command(tag: str, started: str) -> str:
    return f"recovery rollback --tag {tag} --since '{started}'"


def run_guarded(
    url: str | None,
    command: Sequence[str],
    *,
    tag: str,
    max_rows: int | None = None,
    max_rows_per_table: Mapping[str, int] | None = None,
    tables: Sequence[str] = (),
    schema: str = DEFAULT_SCHEMA,
    stderr: IO[str] | None = None,
) -> GuardResult:
    """Run COMMAND with its libpq connections tagged and capped; report what it changed.

    The command's stdout goes straight through; its stderr is passed on line by line
    (to `stderr`, default sys.stderr) and watched for the cap's error message.  The
    exit code is the command's (128 + N when a signal N ended it).
    """
    per_table = dict(max_rows_per_table or {})
    values = settings(tag, max_rows, per_table)
    if not command:
        raise RecoveryError("no command given: recovery guard --tag T -- COMMAND [ARGS...]")
    if shutil.which(command[0]) is None:
        raise RecoveryError(f"command {command[0]!r} not found: check the name and PATH")
    with connect(url) as conn:
        started = _prepare(conn, tables, per_table, schema)
    opts = " ".join(f"-c {k}={v}" for k, v in values.items())
    env = dict(os.environ, PGOPTIONS=f"{os.environ.get('PGOPTIONS', '')} {opts}".strip())
    sink = stderr or sys.stderr
    cap_hit = False
    with subprocess.Popen(
        list(command), env=env, stderr=subprocess.PIPE, text=True, errors="replace"
    ) as proc:

        def pump() -> None:
            nonlocal cap_hit
            assert proc.stderr is not None
            for line in proc.stderr:
                if CAP_MESSAGE in line:
                    cap_hit = True
                sink.write(line)
                sink.flush()

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the command too (same process group): let it finish.
            proc.send_signal(signal.SIGINT)
            rc = proc.wait()
        t.join()
    if rc < 0:
        rc = 128 - rc
    report = _report(resolve_url(url), tag, started, schema)
    return GuardResult(tag, started, rc, cap_hit, report, undo_command(tag, started), list(command))


@dataclass
class GuardReport:
    """What a guard() block changed; filled when the block ends."""

    tag: str
    started_at: str = ""
    changes: ChangesSummary | None = None
    undo_command: str = ""


@contextmanager
def guard(
    target: Any,
    *,
    tag: str,
    max_rows: int | None = None,
    max_rows_per_table: Mapping[str, int] | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> Iterator[GuardReport]:
    """Tag (and cap) every write made through `target` inside the block.

    `target` is a psycopg connection, or a SQLAlchemy Engine, Connection or Session,
    with no transaction open.  The settings are session-level and committed on their
    own, so a rollback inside the block does not drop them; they are put back (and
    committed) when the block ends: end the block with its work committed or rolled
    back.  The yielded report is filled then with what the tag changed.
    """
    per_table = dict(max_rows_per_table or {})
    values = settings(tag, max_rows, per_table)
    report = GuardReport(tag)
    with _applied(target, values) as url:
        with connect(url) as probe:
            _check_cap_tables(probe, per_table, schema)
            report.started_at = str(probe.execute("SELECT clock_timestamp()::text").fetchone()[0])  # type: ignore[index]
        yield report
    report.changes = _report(url, tag, report.started_at, schema)
    report.undo_command = undo_command(tag, report.started_at)


def _busy() -> RecoveryError:
    return RecoveryError(
        "guard() needs a connection with no transaction open: commit or roll back before the block"
    )


@contextmanager
def _applied(target: Any, values: Mapping[str, str]) -> Iterator[str]:
    """Apply the settings to the target's connections; yield a URL for reporting."""
    if isinstance(target, psycopg.Connection):
        yield from _applied_psycopg(target, values)
        return
    from sqlalchemy import event, text
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session

    if isinstance(target, Session):
        if target.in_transaction():
            raise _busy()
        bind = target.get_bind()
        engine = bind if isinstance(bind, Engine) else bind.engine
        # Every connection the session checks out during the block gets the settings.
        with _applied(engine, values) as url:
            yield url
        return
    if isinstance(target, Connection):
        if target.in_transaction():
            raise _busy()

        def put(vals: Mapping[str, str]) -> None:
            for k, v in vals.items():
                target.execute(text("SELECT set_config(:k, :v, false)"), {"k": k, "v": v})

        put(values)
        target.commit()
        failed = False
        try:
            yield target.engine.url.render_as_string(hide_password=False)
        except BaseException:
            failed = True
            raise
        finally:
            if not target.closed:
                if failed and target.in_transaction():
                    target.rollback()  # the block failed; its exception goes on
                left_open = target.in_transaction()
                put({k: "" for k in values})
                if not left_open:
                    target.commit()  # else the block's own commit takes it along
        return
    if isinstance(target, Engine):

        def on_checkout(dbapi_conn: Any, _rec: Any, _proxy: Any) -> None:
            cur = dbapi_conn.cursor()
            for k, v in values.items():
                cur.execute("SELECT set_config(%s, %s, false)", (k, v))
            cur.close()
            dbapi_conn.commit()  # on their own: a rollback in the block keeps them

        def on_checkin(dbapi_conn: Any, _rec: Any) -> None:
            try:
                dbapi_conn.rollback()
                cur = dbapi_conn.cursor()
                for k in values:
                    cur.execute("SELECT set_config(%s, '', false)", (k,))
                cur.close()
                dbapi_conn.commit()
            except Exception:  # noqa: BLE001 - a broken connection is discarded anyway
                pass

        event.listen(target, "checkout", on_checkout)
        event.listen(target, "checkin", on_checkin)
        try:
            yield target.url.render_as_string(hide_password=False)
        finally:
            event.remove(target, "checkout", on_checkout)
            event.remove(target, "checkin", on_checkin)
        return
    raise RecoveryError(
        "guard() takes a psycopg connection or a SQLAlchemy engine, connection or session"
    )


def _applied_psycopg(conn: psycopg.Connection, values: Mapping[str, str]) -> Iterator[str]:
    idle = psycopg.pq.TransactionStatus.IDLE
    if conn.info.transaction_status != idle:
        raise _busy()
    with conn.transaction():  # on their own: a rollback in the block keeps them
        prev = {
            k: conn.execute("SELECT current_setting(%s, true)", [k]).fetchone()[0]  # type: ignore[index]
            for k in values
        }
        for k, v in values.items():
            conn.execute("SELECT set_config(%s, %s, false)", [k, v])
    failed = False
    try:
        yield _psycopg_url(conn)
    except BaseException:
        failed = True
        raise
    finally:
        if not conn.closed:
            status = conn.info.transaction_status
            if status == psycopg.pq.TransactionStatus.INERROR or (failed and status != idle):
                # The block failed: its transaction (opened inside the block, which began
                # on an idle connection) goes, as `with conn.transaction()` would end it;
                # its exception goes on.  The settings can then be put back for good.
                conn.rollback()
            if conn.info.transaction_status == idle:
                with conn.transaction():
                    _put_back(conn, prev)
            else:
                _put_back(conn, prev)  # the block's own commit takes it along


def _put_back(conn: psycopg.Connection, prev: Mapping[str, str | None]) -> None:
    for k, v in prev.items():
        conn.execute("SELECT set_config(%s, %s, false)", [k, v or ""])


def _psycopg_url(conn: psycopg.Connection) -> str:
    params = {k: v for k, v in conn.info.get_parameters().items() if v}
    password = conn.info.password
    if password:
        params["password"] = password
    return psycopg.conninfo.make_conninfo(**params)
