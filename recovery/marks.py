"""Marks: named points in time (`recovery mark NAME`), usable as --since and --until."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from .db import DEFAULT_SCHEMA
from .errors import RecoveryError
from .schema import require_schema

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


@dataclass
class Mark:
    name: str
    at: str
    created_by: str
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def create_mark(
    conn: psycopg.Connection,
    name: str,
    *,
    note: str | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> Mark:
    """Record the current time under `name`; a name is used once.

    Committed in a transaction of its own; inside a caller's open transaction, written
    in a savepoint of it (the caller's commit keeps it)."""
    if not _NAME.match(name):
        raise RecoveryError(
            f"mark name {name!r} is not valid: use letters, digits and . _ : - "
            "(at most 100 characters, starting with a letter or digit)"
        )
    s = sql.Identifier(schema)
    with conn.transaction():
        require_schema(conn, schema)
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {s}.marks (name, stmt_hwm, note)"
                " SELECT %s, CASE WHEN is_called THEN last_value ELSE 0 END, %s FROM {s}.stmt_seq"
                " ON CONFLICT (name) DO NOTHING RETURNING at::text, created_by"
            ).format(s=s),
            [name, note],
        ).fetchone()
        if row is None:
            at = conn.execute(
                sql.SQL("SELECT at::text FROM {}.marks WHERE name = %s").format(s), [name]
            ).fetchone()
            raise RecoveryError(
                f"mark {name!r} exists already (made at {at[0] if at else '?'}): "
                "choose another name"
            )
    return Mark(name, row[0], row[1], note)


def list_marks(conn: psycopg.Connection, *, schema: str = DEFAULT_SCHEMA) -> list[Mark]:
    """All marks, oldest first."""
    with conn.transaction():
        require_schema(conn, schema)
        rows = conn.execute(
            sql.SQL(
                "SELECT name, at::text, created_by, note FROM {}.marks ORDER BY at, name"
            ).format(sql.Identifier(schema))
        ).fetchall()
    return [Mark(*r) for r in rows]


def resolve_time(
    conn: psycopg.Connection, value: str, what: str, schema: str = DEFAULT_SCHEMA
) -> Any:
    """The timestamptz a --since/--until value means: a mark's time, else a time PostgreSQL
    parses.  A mark wins over a time of the same spelling (e.g. a mark named `today`).

    A value that is neither is a RecoveryError; the caller's transaction stays usable
    (the failed cast runs in a savepoint)."""
    try:
        with conn.transaction():
            row = conn.execute(
                sql.SQL("SELECT at FROM {}.marks WHERE name = %s").format(sql.Identifier(schema)),
                [value],
            ).fetchone()
            if row is None:
                row = conn.execute("SELECT %s::timestamptz", [value]).fetchone()
    except psycopg.errors.DataError:
        raise RecoveryError(
            f"--{what} {value!r} is neither a mark nor a time: `recovery mark --list` shows "
            "the marks; a time looks like '2026-11-28 10:00:00+00'"
        ) from None
    assert row is not None
    return row[0]
