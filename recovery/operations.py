"""The record of every operation (`recovery operations`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from .db import DEFAULT_SCHEMA
from .schema import require_schema


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_operations(
    conn: psycopg.Connection, *, limit: int = 50, schema: str = DEFAULT_SCHEMA
) -> list[Operation]:
    """Return the most recent operations, newest first."""
    require_schema(conn, schema)
    try:
        rows = conn.execute(sql.SQL(
            "SELECT op_id, kind, status, requested_by, started_at::text, finished_at::text,"
            " selector, summary, error, tag FROM {}.operations ORDER BY op_id DESC LIMIT %s"
        ).format(sql.Identifier(schema)), [limit]).fetchall()
    finally:
        conn.rollback()
    return [Operation(*r) for r in rows]
