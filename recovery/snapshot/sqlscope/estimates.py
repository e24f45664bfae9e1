"""Planner estimates of what each target of an analysis saves (EXPLAIN, read only)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from ...errors import first_line
from .model import Statement


def estimate(conn: psycopg.Connection, stmts: list[Statement]) -> None:
    """Planner estimates of what each target saves: est_rows = Plan Rows, est_bytes = Plan
    Rows * Plan Width of `SELECT * FROM {from_sql} WHERE {where}` (for a columns target:
    `SELECT ctid, <columns>`, ctid standing in for the key). A statement's estimate is the
    sum over its targets that could be estimated (0 without targets, None when none could).
    Each EXPLAIN runs in a savepoint: a failure (e.g. a table the file creates) is a note.
    Reads only, in a transaction of its own or a savepoint of the caller's, rolled back."""
    with conn.transaction() as tx:
        for st in stmts:
            st.est_rows, st.est_bytes = (None, None) if st.targets else (0, 0)
            for t in st.targets:
                table = sql.Identifier(t.schema, t.table)
                if t.columns is not None:
                    q = sql.SQL("SELECT ctid, {} FROM {}").format(
                        sql.SQL(", ").join(map(sql.Identifier, t.columns)), table
                    )
                elif t.where is None:
                    q = sql.SQL("SELECT * FROM {}").format(table)
                else:
                    q = sql.SQL("SELECT * FROM {} WHERE {}").format(
                        sql.SQL(t.from_sql or ""), sql.SQL(t.where)
                    )
                try:
                    with conn.transaction():
                        row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + q).fetchone()
                except psycopg.Error as exc:
                    st.notes.append(f"cannot estimate {t.schema}.{t.table}: {first_line(exc)}")
                    continue
                plan = (row[0] if row else [{}])[0].get("Plan", {})
                t.est_rows = int(plan.get("Plan Rows", 0))
                t.est_bytes = t.est_rows * int(plan.get("Plan Width", 0))
                st.est_rows = (st.est_rows or 0) + t.est_rows
                st.est_bytes = (st.est_bytes or 0) + t.est_bytes
        raise psycopg.Rollback(tx)
