"""Plan an undo: the tables the selected changes touch, in foreign-key order, their net
tables and their counts against the tables now, and the approval of that plan."""

from __future__ import annotations

from dataclasses import asdict

import psycopg
from psycopg import sql

from .. import approval as ap
from ..capture.eligible import inheritance_problem
from ..capture.tableinfo import TableInfo, load
from ..errors import RecoveryError
from ..selector import Selector
from .report import RollbackReport
from .run import Run


def fk_order(conn: psycopg.Connection, tables: list[TableInfo]) -> list[TableInfo]:
    """Tables with parents before children (by foreign keys among them); stable otherwise."""
    rel = {t.relid: t for t in tables}
    edges = conn.execute(
        "SELECT DISTINCT coalesce(pp.relid, c.confrelid)::oid::bigint,"
        " coalesce(pc.relid, c.conrelid)::oid::bigint "
        "FROM pg_constraint c "
        "LEFT JOIN LATERAL (SELECT relid FROM pg_partition_ancestors(c.confrelid) "
        "  WHERE relid = ANY(%s) LIMIT 1) pp ON true "
        "LEFT JOIN LATERAL (SELECT relid FROM pg_partition_ancestors(c.conrelid) "
        "  WHERE relid = ANY(%s) LIMIT 1) pc ON true "
        "WHERE c.contype = 'f'",
        [list(rel), list(rel)],
    ).fetchall()
    parents: dict[int, set[int]] = {r: set() for r in rel}
    for parent, child in edges:
        if parent in rel and child in rel and parent != child:
            parents[child].add(parent)
    out: list[TableInfo] = []
    placed: set[int] = set()
    pending = sorted(rel, key=lambda r: rel[r].label)
    while pending:
        ready = [r for r in pending if parents[r] <= placed] or pending[:1]  # cycle: any order
        for r in ready:
            out.append(rel[r])
            placed.add(r)
            pending.remove(r)
    return out


def _analyze_journal(conn: psycopg.Connection, schema: str, table_ids: list[int]) -> None:
    """ANALYZE journal chunks whose statistics are missing or stale.

    A chunk written since autovacuum last looked has no useful statistics, and the
    planner then picks nested loops that are quadratic in the damaged rows.
    """
    names = [f"j_{tid}_%" for tid in table_ids] + ["stmt_%"]
    stale = conn.execute(
        "SELECT s.relid::regclass::text FROM pg_stat_user_tables s WHERE s.schemaname = %s"
        " AND s.relname LIKE ANY(%s) AND (coalesce(s.last_analyze, s.last_autoanalyze) IS NULL"
        "  OR s.n_mod_since_analyze > 0.1 * greatest(s.n_live_tup, 1000))",
        [schema, names],
    ).fetchall()
    for (rel,) in stale:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(rel)))


def matching_statements(
    conn: psycopg.Connection, schema: str, where: sql.Composable
) -> list[tuple[int, int, int, int]]:
    return conn.execute(
        sql.SQL(
            "SELECT st.table_id, min(st.stmt_id), max(st.stmt_id), sum(st.nrows)::bigint "
            "FROM {}.stmt st WHERE {} GROUP BY st.table_id ORDER BY st.table_id"
        ).format(sql.Identifier(schema), where)
    ).fetchall()


def build_plan(
    r: Run,
    report: RollbackReport,
    where: sql.Composable,
    matching: list[tuple[int, int, int, int]],
    lock: bool,
) -> None:
    """Build the net tables of the matching tables and compare them with the tables now
    (locking the rows to undo when `lock`): the report's per-table counts."""
    conn, schema = r.conn, r.schema
    r.begin_tx()
    infos = [load(conn, schema, tid) for tid, *_ in matching]
    for t in infos:
        # A table that gained legacy inheritance children (or a parent) since capture
        # began: rows written through the parent are in its journal without the table
        # they live in, and would be put back in the wrong one.
        problem = inheritance_problem(conn, t.relid, t.label)
        if problem:
            raise RecoveryError(f"cannot undo the changes of {problem}")
    r.tables = fk_order(conn, infos)
    changes = {tid: n for tid, _lo, _hi, n in matching}
    _analyze_journal(conn, schema, [t.table_id for t in r.tables])
    for t in r.tables:
        tid, lo, hi, _n = next(m for m in matching if m[0] == t.table_id)
        r.build_net(t, where, lo, hi)
        # Fresh statistics: without them the planner guesses one row and nests loops.
        r.run(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, r.net(t))))
    for t in r.tables:
        r.fill_batch(t, None, None)
        res = r.status(t, lock=lock)
        res.changes = int(changes[t.table_id])
        r.results[t.table_id] = res
    report.tables = [r.results[t.table_id] for t in r.tables]


def gate_plan(
    r: Run,
    report: RollbackReport,
    selector: Selector,
    approval: int | None,
    max_rows: int | None,
    max_tables: int | None,
) -> int | None:
    """Two-person approval of the planned undo (approval.py): the request it consumes,
    or None when it is within the thresholds; else ApprovalPending, nothing changed."""
    plan, rows, tables = ap.rollback_plan(
        selector.as_dict(), report.on_conflict, [asdict(t) for t in report.tables]
    )
    return ap.gate(
        r.conn,
        "rollback",
        plan,
        rows,
        tables,
        schema=r.schema,
        approval=approval,
        max_rows=max_rows,
        max_tables=max_tables,
        what="this undo",
    )
