"""A run's records in `_recovery`: the state of each step (`runbook_steps`) and of the
run (`runbook_runs`), each written in a transaction of its own; the operations its
steps started; the listings of runs and steps."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..db import DEFAULT_SCHEMA
from ..schema import require_schema
from ..selector import Selector
from .context import Execution
from .definition import Step
from .values import plain


def record_step(
    x: Execution,
    n: int,
    step: Step,
    status: str,
    result: Any,
    error: str | None = None,
    *,
    start: bool = False,
) -> None:
    """Write a step's state in a transaction of its own (started_at kept unless start)."""
    settle(x.conn)
    with x.conn.transaction():
        x.conn.execute(
            sql.SQL(
                "INSERT INTO {s}.runbook_steps AS r (run_id, step_no, step_id, kind, status,"
                " started_at, finished_at, result, error) VALUES (%(run)s, %(n)s, %(id)s,"
                " %(kind)s, %(status)s, CASE WHEN %(start)s THEN clock_timestamp() END,"
                " CASE WHEN %(fin)s THEN clock_timestamp() END, %(result)s, %(error)s)"
                " ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status,"
                " started_at = CASE WHEN %(start)s THEN excluded.started_at ELSE r.started_at END,"
                " finished_at = excluded.finished_at, result = excluded.result,"
                " error = excluded.error"
            ).format(s=sql.Identifier(x.schema)),
            {
                "run": x.run_id,
                "n": n,
                "id": step.id,
                "kind": step.kind,
                "status": status,
                "start": start,
                "fin": status in ("done", "skipped", "failed"),
                "result": Jsonb(plain(result)),
                "error": error,
            },
        )


def set_run_status(x: Execution, status: str, error: str | None = None) -> None:
    settle(x.conn)
    with x.conn.transaction():
        x.conn.execute(
            sql.SQL(
                "UPDATE {}.runbook_runs SET status = %s, error = %s, finished_at = CASE WHEN %s"
                " THEN clock_timestamp() END WHERE run_id = %s"
            ).format(sql.Identifier(x.schema)),
            [status, error, status != "running", x.run_id],
        )


def settle(conn: psycopg.Connection) -> None:
    """Roll back what a step left open (the library's functions leave none; before the
    run's records, as ever).  The run owns its connection (run() and resume() refuse
    one with a transaction open), so any transaction open here is the run's own."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()


def find_op(x: Execution, step: Step, kind: str, match: sql.Composable) -> int | None:
    """The newest operation of this kind that a step started (after the step's start)."""
    with x.conn.transaction():
        row = x.conn.execute(
            sql.SQL(
                "SELECT op_id FROM {s}.operations WHERE kind = %s AND {m} AND started_at >= (SELECT"
                " started_at FROM {s}.runbook_steps WHERE run_id = %s AND step_id = %s)"
                " ORDER BY op_id DESC LIMIT 1"
            ).format(s=sql.Identifier(x.schema), m=match),
            [kind, x.run_id, step.id],
        ).fetchone()
    return int(row[0]) if row else None


def op_state(x: Execution, op_id: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    with x.conn.transaction():
        row = x.conn.execute(
            sql.SQL(
                "SELECT status, coalesce(options, '{{}}'), coalesce(summary, '{{}}')"
                " FROM {}.operations WHERE op_id = %s"
            ).format(sql.Identifier(x.schema)),
            [op_id],
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def rollback_op(x: Execution, step: Step, args: dict[str, Any]) -> int | None:
    sel = Jsonb(Selector.from_dict(args).as_dict())
    return find_op(x, step, "rollback", sql.SQL("selector = {}").format(sql.Literal(sel)))


def run_steps(
    conn: psycopg.Connection, run_id: int, *, schema: str = DEFAULT_SCHEMA
) -> list[dict[str, Any]]:
    with conn.transaction():
        rows = conn.execute(
            sql.SQL(
                "SELECT step_no, step_id, kind, status, started_at::text, finished_at::text,"
                " result, error FROM {}.runbook_steps WHERE run_id = %s ORDER BY step_no"
            ).format(sql.Identifier(schema)),
            [run_id],
        ).fetchall()
    keys = ("step_no", "step_id", "kind", "status", "started_at", "finished_at", "result", "error")
    return [dict(zip(keys, r)) for r in rows]


def list_runs(
    conn: psycopg.Connection, *, limit: int = 20, schema: str = DEFAULT_SCHEMA
) -> list[dict[str, Any]]:
    """Recent runs, newest first, with the step each stopped at (if not done)."""
    with conn.transaction():
        require_schema(conn, schema)
        rows = conn.execute(
            sql.SQL(
                "SELECT r.run_id, r.name, r.file, r.status, r.dry_run, r.started_by,"
                " r.started_at::text, r.finished_at::text, r.error, (SELECT s.step_id FROM"
                " {s}.runbook_steps s WHERE s.run_id = r.run_id AND s.status NOT IN ('done',"
                " 'skipped') ORDER BY s.step_no LIMIT 1) FROM {s}.runbook_runs r"
                " ORDER BY r.run_id DESC LIMIT %s"
            ).format(s=sql.Identifier(schema)),
            [limit],
        ).fetchall()
    keys = (
        "run_id",
        "name",
        "file",
        "status",
        "dry_run",
        "started_by",
        "started_at",
        "finished_at",
        "error",
        "at_step",
    )
    return [dict(zip(keys, r)) for r in rows]
