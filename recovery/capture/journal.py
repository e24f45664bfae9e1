"""Read the journal: what a selector covers (`changes`) and row/column samples (`diff`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..db import DEFAULT_SCHEMA
from ..schema import require_schema
from ..selector import Selector, where_clause
from .drain import catch_up
from .tableinfo import load

OPS = {"I": "insert", "U": "update", "D": "delete", "T": "truncate"}


@dataclass
class ChangesSummary:
    selector: dict[str, Any]
    statements: int
    rows: int
    first: str | None
    last: str | None
    by_table: list[dict[str, Any]] = field(default_factory=list)
    by_tag: list[dict[str, Any]] = field(default_factory=list)
    by_transaction: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def changes(
    conn: psycopg.Connection,
    selector: Selector,
    *,
    schema: str = DEFAULT_SCHEMA,
    max_transactions: int = 50,
) -> ChangesSummary:
    """Count the captured changes a selector covers, per table and operation, tag, transaction.

    Reads only, in a transaction of its own or a savepoint of the caller's (left open)."""
    catch_up(conn, schema, required=False)
    with conn.transaction():
        require_schema(conn, schema)
        where = where_clause(conn, selector, schema)
        s = sql.Identifier(schema)
        head = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(sum(nrows), 0)::bigint, min(at)::text, max(at)::text"
                " FROM {}.stmt st WHERE {}"
            ).format(s, where)
        ).fetchone()
        assert head is not None
        out = ChangesSummary(selector.as_dict(), int(head[0]), int(head[1]), head[2], head[3])
        for table, op, n, rows in conn.execute(
            sql.SQL(
                "SELECT c.schema_name || '.' || c.table_name, st.op, count(*),"
                " sum(st.nrows)::bigint"
                " FROM {s}.stmt st JOIN {s}.captured c USING (table_id) WHERE {w}"
                " GROUP BY 1, 2 ORDER BY 1, 2"
            ).format(s=s, w=where)
        ):
            out.by_table.append(
                {"table": table, "operation": OPS.get(op, op), "statements": n, "rows": int(rows)}
            )
        for tag, n, rows, first, last in conn.execute(
            sql.SQL(
                "SELECT st.tag, count(*), sum(st.nrows)::bigint, min(at)::text, max(at)::text"
                " FROM {}.stmt st WHERE {} GROUP BY 1 ORDER BY min(at)"
            ).format(s, where)
        ):
            out.by_tag.append(
                {"tag": tag, "statements": n, "rows": int(rows), "first": first, "last": last}
            )
        for txid, tag, user, app, n, rows, first in conn.execute(
            sql.SQL(
                "SELECT st.txid, min(st.tag), min(st.db_user), min(st.app), count(*),"
                " sum(st.nrows)::bigint, min(at)::text FROM {}.stmt st WHERE {}"
                " GROUP BY 1 ORDER BY min(st.stmt_id) LIMIT {}"
            ).format(s, where, sql.Literal(max_transactions))
        ):
            out.by_transaction.append(
                {
                    "txid": txid,
                    "tag": tag,
                    "user": user,
                    "app": app,
                    "statements": n,
                    "rows": int(rows),
                    "first": first,
                }
            )
    return out


@dataclass
class RowChange:
    table: str
    operation: str
    txid: int
    at: str
    tag: str | None
    key: dict[str, Any]
    # column -> [before, after] (text forms); only changed columns for an update
    columns: dict[str, list[Any]]


def diff(
    conn: psycopg.Connection,
    selector: Selector,
    *,
    limit: int = 20,
    schema: str = DEFAULT_SCHEMA,
) -> list[RowChange]:
    """Return up to `limit` changed rows per table with column-level before/after values.

    Reads only, in a transaction of its own or a savepoint of the caller's (left open)."""
    s = sql.Identifier(schema)
    out: list[RowChange] = []
    catch_up(conn, schema, required=False)
    with conn.transaction():
        require_schema(conn, schema)
        where = where_clause(conn, selector, schema)
        tids = [
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT DISTINCT table_id FROM {}.stmt st WHERE {} ORDER BY 1").format(
                    s, where
                )
            )
        ]
        for tid in tids:
            t = load(conn, schema, tid)
            cols = t.writable
            pairs = sql.SQL(", ").join(
                sql.SQL(
                    "{}, CASE WHEN b.rec_stmt IS NULL OR a.rec_stmt IS NULL OR ({})::text IS "
                    "DISTINCT FROM ({})::text"
                    " THEN jsonb_build_array(({})::text, ({})::text) END"
                ).format(
                    sql.Literal(c.name), c.value("b"), c.value("a"), c.value("b"), c.value("a")
                )
                for c in cols
            )
            keys = sql.SQL(", ").join(
                sql.SQL("{}, coalesce(({})::text, ({})::text)").format(
                    sql.Literal(c.name), c.value("a"), c.value("b")
                )
                for c in t.key
            )
            j = sql.Identifier(schema, t.journal)
            rows = conn.execute(
                sql.SQL(
                    "SELECT st.op, st.txid, st.at::text, st.tag, jsonb_build_object({keys}),"
                    " jsonb_strip_nulls(jsonb_build_object({pairs}))"
                    " FROM (SELECT * FROM {s}.stmt st WHERE st.table_id = {tid} AND {w}) st"
                    " JOIN LATERAL (SELECT coalesce(b.rec_ord, a.rec_ord) AS ord, b, a FROM"
                    "   (SELECT * FROM {j} x WHERE x.rec_stmt = st.stmt_id AND x.rec_img = 'B') b"
                    "   FULL JOIN (SELECT * FROM {j} x"
                    "    WHERE x.rec_stmt = st.stmt_id AND x.rec_img = 'A')"
                    "   a ON a.rec_ord = b.rec_ord) p ON true,"
                    " LATERAL (SELECT (p.b).*) b, LATERAL (SELECT (p.a).*) a"
                    " ORDER BY st.stmt_id, p.ord LIMIT {lim}"
                ).format(
                    keys=keys,
                    pairs=pairs,
                    s=s,
                    tid=sql.Literal(tid),
                    w=where,
                    j=j,
                    lim=sql.Literal(limit),
                )
            ).fetchall()
            for op, txid, at, tag, key, values in rows:
                out.append(
                    RowChange(t.label, OPS[op] if op in OPS else op, txid, at, tag, key, values)
                )
    return out
