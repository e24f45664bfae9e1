"""The undo's operation record: its status and summary while it runs and when it ends."""

from __future__ import annotations

import json
import time

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .. import operations
from .report import RollbackReport
from .run import Run


def set_status(r: Run, status: str, report: RollbackReport) -> None:
    report.status = status
    r.conn.execute(
        sql.SQL("UPDATE {}.operations SET status = %s, summary = %s WHERE op_id = %s").format(
            sql.Identifier(r.schema)
        ),
        [status, Jsonb(report.to_dict()), r.op_id],
    )


def finish(r: Run, report: RollbackReport, status: str, started: float) -> None:
    for t in r.tables:
        r.conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(r.schema, r.net(t)))
        )
    report.status = status
    report.seconds = time.monotonic() - started
    r.conn.execute(
        sql.SQL(
            "UPDATE {}.operations SET status = %s, summary = %s, finished_at = clock_timestamp(),"
            " tag = %s WHERE op_id = %s"
        ).format(sql.Identifier(r.schema)),
        [status, Jsonb(report.to_dict()), report.undo_tag, r.op_id],
    )


def record_end(
    conn: psycopg.Connection,
    schema: str,
    op_id: int | None,
    status: str,
    report: RollbackReport,
    error: str,
) -> None:
    if op_id is None:
        return
    report.status = status
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "UPDATE {}.operations SET status = %s, summary = %s, error = %s,"
                " finished_at = clock_timestamp() WHERE op_id = %s"
            ).format(sql.Identifier(schema)),
            [status, Jsonb(json.loads(json.dumps(report.to_dict(), default=str))), error, op_id],
        )
    operations.release(conn, op_id)
