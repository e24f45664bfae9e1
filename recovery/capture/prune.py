"""Retention: drop captured changes older than a period, whole chunks at a time."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..db import DEFAULT_SCHEMA, scalar
from ..errors import RecoveryError
from ..schema import require_schema

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass
class PruneResult:
    cutoff: str
    generation: int
    dropped_chunks: list[int]
    dropped_statements: int
    dropped_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_duration(text: str) -> str:
    """Turn '7d', '12h', '30m' or a PostgreSQL interval ('7 days') into interval text."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if m:
        return f"{m.group(1)} {_UNITS[m.group(2)]}"
    if re.fullmatch(r"\s*\d+\s+(second|minute|hour|day|week|month|year)s?\s*", text):
        return text.strip()
    raise RecoveryError(f"--older-than {text!r} is not a duration: use e.g. 7d, 12h or '30 days'")


def prune(
    conn: psycopg.Connection,
    older_than: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    lock_timeout: str = "5s",
) -> PruneResult:
    """Start a new journal chunk, then drop every chunk whose changes are all older than cutoff.

    Chunks (one per generation) are dropped whole, which is cheap whatever their
    size; the price is granularity: changes newer than the cutoff keep their chunk,
    and so do older changes in the same chunk until the next prune.

    One transaction of its own, committed; inside a caller's open transaction, a
    savepoint of it (the chunks are dropped when the caller commits).
    """
    interval = parse_duration(older_than)
    try:
        with conn.transaction():
            require_schema(conn, schema)
            previous = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
            conn.execute("SELECT set_config('lock_timeout', %s, true)", [lock_timeout])
            cutoff, gen, dropped, nstmt, nbytes = _prune(conn, schema, interval)
            # Inside a caller's transaction, give it back its own lock_timeout.
            conn.execute(
                "SELECT set_config('lock_timeout', %s, true)", [previous[0] if previous else "0"]
            )
    except psycopg.errors.LockNotAvailable:
        raise RecoveryError(
            "the journal is locked by a long transaction: prune waited beyond lock_timeout; retry"
        ) from None
    return PruneResult(cutoff, gen, dropped, nstmt, nbytes)


def _prune(
    conn: psycopg.Connection, schema: str, interval: str
) -> tuple[str, int, list[int], int, int]:
    """The work of prune() in the current transaction: (cutoff, generation, chunks
    dropped, statements and bytes dropped)."""
    s = sql.Identifier(schema)
    cutoff = conn.execute("SELECT (now() - %s::interval)::text", [interval]).fetchone()[0]  # type: ignore[index]
    gen = int(
        scalar(
            conn,
            sql.SQL(
                "UPDATE {}.meta SET value = (value::int + 1)::text WHERE key = 'gen'"
                " RETURNING value"
            ).format(s),
        )
    )
    conn.execute(
        sql.SQL("SELECT {s}.build_capture(table_id) FROM {s}.captured WHERE enabled").format(s=s)
    )
    old = conn.execute(
        "SELECT substring(c.relname from 6)::int FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname ~ '^stmt_[0-9]+$'"
        " AND substring(c.relname from 6)::int < %s ORDER BY 1",
        [schema, gen],
    ).fetchall()
    dropped: list[int] = []
    nstmt = 0
    nbytes = 0
    for (g,) in old:
        stmt_leaf = sql.Identifier(schema, f"stmt_{g}")
        newest, count = conn.execute(
            sql.SQL("SELECT max(at), count(*) FROM {}").format(stmt_leaf)
        ).fetchone()  # type: ignore[misc]
        if newest is not None and scalar(
            conn, "SELECT %s::timestamptz >= %s::timestamptz", [newest, cutoff]
        ):
            continue
        leaves = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname ~ ('^j_[0-9]+_' || %s || '$')",
            [schema, str(g)],
        ).fetchall()
        for (leaf,) in leaves + [(f"stmt_{g}",)]:
            ident = sql.Identifier(schema, leaf)
            nbytes += conn.execute(
                sql.SQL("SELECT pg_total_relation_size({})").format(
                    sql.Literal(f'"{schema}"."{leaf}"')
                )
            ).fetchone()[0]  # type: ignore[index]
            conn.execute(sql.SQL("DROP TABLE {}").format(ident))
        dropped.append(g)
        nstmt += int(count)
    conn.execute(
        sql.SQL("INSERT INTO {}.events (kind, detail) VALUES ('prune', %s)").format(s),
        [f"older than {interval}: dropped chunks {dropped}"],
    )
    return cutoff, gen, dropped, nstmt, nbytes
