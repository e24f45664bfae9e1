"""The record of every operation (`recovery operations`).

While an operation runs, the session running it holds an advisory lock on the pair
(LOCK_CLASS, op_id), taken when the operation is recorded and released when it ends
(or, if the process dies, by PostgreSQL when the session goes).  An operation whose
status says it is under way but whose lock nobody holds was interrupted, and is
listed as such.  (Behind a pooler in transaction mode the lock may stay with a server
connection: the listing may then miss an interruption; nothing else depends on it.)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from .db import DEFAULT_SCHEMA
from .errors import RecoveryError
from .schema import installed_version, require_schema

# First half of the advisory lock key; the second is the operation id (an int4 key).
LOCK_CLASS = 0x52435652  # "RCVR"
UNDER_WAY = ("planning", "applying", "running")


def _key(op_id: int) -> int:
    return op_id % 2147483647


def refuse_in_transaction(conn: psycopg.Connection, what: str, why: str) -> None:
    """Raise RecoveryError when conn has a transaction open: `what` commits as it goes
    (`why`), so it cannot run inside a caller's transaction without committing (or
    rolling back) the caller's work with its own."""
    if conn.info.transaction_status in (
        psycopg.pq.TransactionStatus.INTRANS,
        psycopg.pq.TransactionStatus.INERROR,
    ):
        raise RecoveryError(
            f"{what} commits as it goes ({why}): call it outside an open "
            "transaction (commit or roll back first)"
        )


def hold(conn: psycopg.Connection, op_id: int | None) -> bool:
    """Take the lock that says this session runs op_id; False if another session has it.

    A session lock: it outlives the block it is taken in (and a rollback of it); the
    connection is left as it was found (idle, or in the caller's transaction)."""
    if op_id is None:
        return True
    with conn.transaction():
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", [LOCK_CLASS, _key(op_id)]
        ).fetchone()
    return bool(row and row[0])


def release(conn: psycopg.Connection, op_id: int | None) -> None:
    """Let go of the lock of op_id (session level: outside or inside a transaction), and
    of the apply lock (claim_apply) when this session holds it."""
    if op_id is None or conn.closed:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_CLASS, _key(op_id)])
        # Only when held: unlocking a lock one does not hold draws a server WARNING.
        conn.execute(
            "SELECT pg_advisory_unlock(%s, 0) FROM pg_locks WHERE locktype = 'advisory'"
            " AND pid = pg_backend_pid() AND classid = %s::bigint::oid AND objid = 0"
            " AND objsubid = 2 AND granted",
            [APPLY_CLASS, APPLY_CLASS],
        )


# The apply lock: one undo or restore applying at a time in a database (session level,
# held from planning to the last batch).  Two people on call pressing the button at once
# on the same damage must not race each other: the second is told at once who runs what.
# Coarser than per table on purpose: whether two undos touch the same rows is known only
# after planning, and two undos running at once on the worst day are better serialised.
APPLY_CLASS = LOCK_CLASS + 1


def claim_apply(conn: psycopg.Connection, schema: str, op_id: int | None) -> None:
    """Take the apply lock for op_id, or raise RecoveryError naming the operation under way
    (its id, kind, who started it and when, its session's pid); nothing is changed then."""
    if op_id is None:
        return
    with conn.transaction():
        got = conn.execute("SELECT pg_try_advisory_lock(%s, 0)", [APPLY_CLASS]).fetchone()
        if got and got[0]:
            return
        other = conn.execute(
            sql.SQL(
                "SELECT o.op_id, o.kind, o.requested_by,"
                " to_char(o.started_at, 'YYYY-MM-DD\"T\"HH24:MI:SSOF'), h.pid"
                " FROM pg_locks h"
                " LEFT JOIN pg_locks l ON l.pid = h.pid AND l.locktype = 'advisory'"
                "  AND l.classid = %s::bigint::oid AND l.objsubid = 2 AND l.granted"
                " LEFT JOIN {}.operations o ON o.op_id = l.objid::bigint"
                " WHERE h.locktype = 'advisory' AND h.classid = %s::bigint::oid"
                " AND h.objid = 0 AND h.objsubid = 2 AND h.granted"
                " AND h.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " ORDER BY o.op_id DESC NULLS LAST LIMIT 1"
            ).format(sql.Identifier(schema)),
            [LOCK_CLASS, APPLY_CLASS],
        ).fetchone()
    if other is None or other[0] is None:
        who = f" (session pid {other[4]})" if other else ""
        raise RecoveryError(
            f"another undo or restore is under way in this database{who}: nothing was "
            "changed; wait for it to finish (`recovery operations`), then run again"
        )
    op, kind, user, since, pid = other
    raise RecoveryError(
        f"another {kind} is under way in this database: operation {op}, started by {user} "
        f"at {since} (session pid {pid}); nothing was changed: wait for it to finish "
        "(`recovery operations`), then run again, and what it put back shows as already done"
    )


@dataclass
class Operation:
    op_id: int
    kind: str
    status: str
    requested_by: str
    started_at: str
    finished_at: str | None
    selector: dict[str, Any] | None
    summary: dict[str, Any] | None
    error: str | None
    tag: str | None
    # Under way by its status, but no session runs it any more (killed, lost).
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_operations(
    conn: psycopg.Connection, *, limit: int = 50, schema: str = DEFAULT_SCHEMA
) -> list[Operation]:
    """Return the most recent operations, newest first."""
    with conn.transaction():
        require_schema(conn, schema)
        rows = conn.execute(
            sql.SQL(
                "SELECT op_id, kind, status, requested_by, started_at::text, finished_at::text,"
                " selector, summary, error, tag, status = ANY(%s) AND NOT EXISTS ("
                "  SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
                "  AND l.database = (SELECT oid FROM pg_database"
                "   WHERE datname = current_database())"
                "  AND l.classid::bigint = %s AND l.objid::bigint = op_id %% 2147483647"
                "  AND l.objsubid = 2)"
                " FROM {}.operations ORDER BY op_id DESC LIMIT %s"
            ).format(sql.Identifier(schema)),
            [list(UNDER_WAY), LOCK_CLASS, limit],
        ).fetchall()
    return [Operation(*r) for r in rows]


# -- operation records -------------------------------------------------------------
def record_start(
    conn: psycopg.Connection, schema: str, kind: str, options: dict[str, Any]
) -> int | None:
    """Record an operation when the recovery schema is here (a restore into a fresh
    database, or a directory snapshot of a database without it, works without).
    Call inside a transaction: it is not ended here."""
    try:
        with conn.transaction():  # a savepoint: an unreadable schema leaves it usable
            version = installed_version(conn, schema)
    except psycopg.Error:
        return None
    if version is None or version < 2:
        return None
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {}.operations (kind, status, options) VALUES (%s, 'running', %s)"
            " RETURNING op_id"
        ).format(sql.Identifier(schema)),
        [kind, json.dumps(options)],
    ).fetchone()
    op_id = int(row[0]) if row else None
    hold(conn, op_id)  # released by the caller once the end is committed
    return op_id


def record_end(
    conn: psycopg.Connection,
    schema: str,
    op_id: int | None,
    status: str,
    summary: dict[str, Any] | None,
    error: str | None,
    started: float,
) -> None:
    if op_id is None:
        return
    if summary is not None:
        summary = {**summary, "seconds": round(time.monotonic() - started, 3)}
    conn.execute(
        sql.SQL(
            "UPDATE {}.operations SET status = %s, summary = %s, error = %s,"
            " finished_at = clock_timestamp() WHERE op_id = %s"
        ).format(sql.Identifier(schema)),
        [status, json.dumps(summary, default=str) if summary is not None else None, error, op_id],
    )
