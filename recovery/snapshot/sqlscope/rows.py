"""Row statements (UPDATE, DELETE, INSERT ON CONFLICT, MERGE, data-modifying CTEs): their
row targets, widened when their WHERE cannot be trusted, and foreign-key cascades."""

from __future__ import annotations

from typing import Any

import psycopg
from pglast import ast
from pglast.enums import CmdType, MergeMatchKind, OnConflictAction
from psycopg import sql

from ...errors import first_line
from . import ddl
from .context import Context
from .model import Row, Statement, Target
from .nodes import DML, deparse, exists_sql, ident, name_parts, out_columns, walk

_FK_ACTION = {"c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def finish(cx: Context, st: Statement, rows: list[Row]) -> None:
    """Widen, check and cascade row targets; add them to the statement, once each."""
    out = [settle(cx, st, r) for r in rows]
    for r in rows:
        out += cascade(cx, st, r, {r.target.relid}, set())
    keys = {(t.relid, t.from_sql, t.where, t.columns) for t in st.targets}
    for t in out:
        if (t.relid, t.from_sql, t.where, t.columns) not in keys:
            keys.add((t.relid, t.from_sql, t.where, t.columns))
            st.targets.append(t)


def settle(cx: Context, st: Statement, r: Row) -> Target:
    """Widen a row target whose WHERE cannot be trusted before the file runs."""
    t, why = r.target, None
    if t.where is None:
        return t
    # A table the WHERE reads (a join, a subquery; its own table too, through a
    # subquery) that an earlier statement writes: evaluated before the file runs,
    # the WHERE may select other rows than it will then.  (Columns of the target
    # row itself are no read: rows an earlier statement changed are saved by it.)
    hit = sorted(x for x in r.reads if x in cx.written)
    if hit:
        other = cx.rels("WHERE c.oid = %s", [hit[0]])[0].name
        why = f"reads {other}, which statement {cx.written[hit[0]]} writes"
    else:
        try:
            with cx.conn.transaction():
                cx.q(
                    sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE {}").format(
                        sql.SQL(t.from_sql or ""), sql.SQL(t.where)
                    )
                )
        except psycopg.Error as exc:
            why = f"its WHERE does not run before the file ({first_line(exc)})"
    if why:
        st.notes.append(f"{t.schema}.{t.table}: {why}: widened to the whole table")
        t.where = t.from_sql = None
        t.bounded = False
    return t


def cascade(
    cx: Context, st: Statement, parent: Row, path: set[int], whole: set[int]
) -> list[Target]:
    """Rows that foreign-key actions change when parent's rows are deleted or updated:
    `(fkcols) IN (SELECT refcols FROM parent WHERE ...)`, recursively. A table met again
    on the path (a cycle, a self-reference included) is saved whole, unbounded, once."""
    p = parent.target
    if not parent.ops or p.columns is not None or len(path) > 16:
        return []
    out: list[Target] = []
    for relid, schema, table, deltype, updtype, fkcols, refcols in cx.q(
        "SELECT k.conrelid, n.nspname, c.relname, k.confdeltype, k.confupdtype, ARRAY("
        "SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, i) JOIN "
        "pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i), "
        "ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(n, i) "
        "JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY "
        "u.i) FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN "
        "pg_namespace n ON n.oid = c.relnamespace WHERE k.contype = 'f' AND k.confrelid "
        "= %s AND NOT EXISTS (SELECT FROM pg_constraint x WHERE x.oid = k.conparentid "
        "AND x.confrelid = k.confrelid) ORDER BY 2, 3, k.conname",
        [p.relid],
    ):
        acts = [("DELETE", deltype)] if "delete" in parent.ops and deltype in _FK_ACTION else []
        if (
            "update" in parent.ops
            and updtype in _FK_ACTION
            and (parent.setcols is None or parent.setcols & set(refcols))
        ):
            acts.append(("UPDATE", updtype))
        if not acts or relid in whole:
            continue
        reason = f"ON {acts[0][0]} {_FK_ACTION[acts[0][1]]} from {p.schema}.{p.table}"
        src = p.from_sql or ident(p.schema, p.table)
        where = (
            f"({', '.join(map(ident, fkcols))}) IN (SELECT "
            f"{', '.join(map(ident, refcols))} FROM {src}"
            + (f" WHERE {p.where})" if p.where else ")")
        )
        child = Target(relid, schema, table, ident(schema, table), where, None, True, reason)
        if relid in path:  # a cycle: how deep it goes is unknown
            child.where = child.from_sql = None
            child.bounded, child.reason = False, reason + " (a cycle): whole table"
            whole.add(relid)
        ops = frozenset("delete" if a == ("DELETE", "c") else "update" for a in acts)
        row = Row(child, parent.reads | {p.relid}, ops, set(fkcols))
        out.append(settle(cx, st, row))
        out += cascade(cx, st, row, path | {relid}, whole)
    return out


def with_prefix(cx: Context, wc: Any, parts: Any, outer: set[str]) -> tuple[str, bool]:
    """`WITH ...` of the read-only CTEs, to evaluate the WHERE standalone; False when the
    WHERE reads a data-modifying CTE or (for a modifying CTE) a sibling CTE."""
    ctes = list(wc.ctes) if wc else []
    kept = [c for c in ctes if isinstance(c.ctequery, ast.SelectStmt)]
    names = {c.ctename for c in ctes}
    banned = (names - {c.ctename for c in kept}) | (outer - names)
    refs = {
        n.relname for n in walk((parts, kept)) if isinstance(n, ast.RangeVar) and not n.schemaname
    }
    prefix = (
        ("WITH RECURSIVE " if wc.recursive else "WITH ")
        + deparse(ast.WithClause(ctes=tuple(kept), recursive=False))
        + " "
        if kept
        else ""
    )
    return prefix, not (refs & banned)


def reads(cx: Context, parts: Any) -> set[int]:
    """Tables (and the tables of views) that parse trees read, CTE names aside."""
    ctes = {n.ctename for n in walk(parts) if isinstance(n, ast.CommonTableExpr)}
    out: set[int] = set()
    for n in walk(parts):
        if isinstance(n, ast.RangeVar) and (n.schemaname or n.relname not in ctes):
            rel = cx.resolve(name_parts(n))
            if rel:
                out |= {rel.relid} | (
                    {b.relid for b in cx.base_tables(rel.relid)} if rel.relkind == "v" else set()
                )
    return out


def dml(cx: Context, st: Statement, node: Any, outer: set[str]) -> list[Row]:
    """Row targets of an UPDATE / DELETE / INSERT ON CONFLICT / MERGE, and of the
    data-modifying CTEs of any statement (recursively)."""
    rows: list[Row] = []
    wc = getattr(node, "withClause", None)
    names = {c.ctename for c in wc.ctes} if wc else set()
    for cte in wc.ctes if wc else ():
        if isinstance(cte.ctequery, DML):
            rows += dml(cx, st, cte.ctequery, outer | names)
    setcols: set[str] | None = None
    where: str | None = None
    if isinstance(node, (ast.UpdateStmt, ast.DeleteStmt)):
        verb = "UPDATE" if isinstance(node, ast.UpdateStmt) else "DELETE"
        extra = list(
            (node.fromClause if isinstance(node, ast.UpdateStmt) else node.usingClause) or ()
        )
        parts: Any = (node.whereClause, extra)
        ops = frozenset({verb.lower()})
        if isinstance(node, ast.UpdateStmt):
            assert node.targetList is not None  # UPDATE always has a SET list
            setcols = {rt.name for rt in node.targetList}
        prefix, ok = with_prefix(cx, wc, parts, outer)
        if isinstance(node.whereClause, ast.CurrentOfExpr):
            reason, ok = "WHERE CURRENT OF: cannot bound, whole table", False
        elif not ok:
            reason = f"the {verb} reads another CTE of its statement: cannot bound, whole table"
        elif node.whereClause is None and not extra:
            reason = f"{verb} without WHERE: whole table"
        else:
            cond = deparse(node.whereClause) if node.whereClause is not None else None
            where = exists_sql(prefix, list(map(deparse, extra)), cond) if extra or prefix else cond
            reason = f"rows the {verb}'s WHERE selects"
    elif isinstance(node, ast.InsertStmt):
        oc = node.onConflictClause
        if oc is None or oc.action != OnConflictAction.ONCONFLICT_UPDATE:
            assert node.relation is not None  # INSERT always names its table
            rel = cx.resolve(name_parts(node.relation))
            if rel:
                cx.written.setdefault(rel.relid, st.number)
            return rows
        parts, ops = node.selectStmt, frozenset({"update"})
        setcols = {rt.name for rt in oc.targetList or ()}
        where, reason = upsert(cx, node, outer)
        ok = where is not None
    elif isinstance(node, ast.MergeStmt):
        assert node.mergeWhenClauses is not None  # MERGE always has a WHEN clause
        acts = [
            w
            for w in node.mergeWhenClauses
            if w.commandType in (CmdType.CMD_UPDATE, CmdType.CMD_DELETE)
        ]
        if not acts:
            st.notes.append("MERGE only inserts (WHEN NOT MATCHED): destroys no existing row")
            return rows
        ops = frozenset("delete" if w.commandType == CmdType.CMD_DELETE else "update" for w in acts)
        setcols = {rt.name for w in acts for rt in w.targetList or ()}
        parts = (node.sourceRelation, node.joinCondition)
        prefix, ok = with_prefix(cx, wc, parts, outer)
        kinds = {w.matchKind for w in acts}
        exists = exists_sql(prefix, [deparse(node.sourceRelation)], deparse(node.joinCondition))
        if not ok:
            reason = "the MERGE reads a data-modifying CTE: cannot bound, whole table"
        elif MergeMatchKind.MERGE_WHEN_NOT_MATCHED_BY_SOURCE not in kinds:
            where, reason = exists, "rows the MERGE's join condition matches"
        elif MergeMatchKind.MERGE_WHEN_MATCHED not in kinds:
            where, reason = "NOT " + exists, "rows the MERGE's source does not match"
        else:
            reason = "MERGE of matched and unmatched rows: whole table"
    else:
        return rows
    return rows + row_targets(
        cx, st, node.relation, where, ok, reason, reads(cx, (parts, wc)), ops, setcols
    )


def upsert(cx: Context, node: ast.InsertStmt, outer: set[str]) -> tuple[str | None, str]:
    """INSERT ... ON CONFLICT DO UPDATE: the existing rows whose conflict key equals an
    inserted row's: `(t.k) IN (SELECT CAST(_ins.k AS type) FROM (<rows>) _ins(<cols>))`.
    (None, reason) when the key cannot be mapped to inserted values."""
    oc, rv, sel = node.onConflictClause, node.relation, node.selectStmt
    assert oc is not None and rv is not None  # called for ON CONFLICT DO UPDATE only
    rel, no = cx.resolve(name_parts(rv)), "cannot bound, whole table"
    if rel is None or rel.relkind not in ("r", "p"):
        return None, no
    cols = dict(cx.columns(rel.relid))
    if oc.infer is not None and oc.infer.conname:
        keys = [
            r[0]
            for r in cx.q(
                "SELECT a.attname FROM pg_constraint k, unnest(k.conkey) WITH ORDINALITY "
                "u(n, i), pg_attribute a WHERE k.conrelid = %s AND k.conname = %s AND "
                "a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i",
                [rel.relid, oc.infer.conname],
            )
        ]
    elif oc.infer is not None and all(e.name for e in oc.infer.indexElems or ()):
        assert oc.infer.indexElems is not None  # ON CONFLICT (...) lists one key at least
        keys = [e.name for e in oc.infer.indexElems]
    else:
        return None, f"ON CONFLICT with an expression key: {no}"
    if node.cols and any(rt.indirection for rt in node.cols):
        return None, f"INSERT into subfields: {no}"
    inscols = [rt.name for rt in node.cols] if node.cols else list(cols)
    inscols = inscols[: out_columns(sel) or len(inscols)]
    if sel is None or not keys or any(k not in inscols for k in keys):
        return None, f"conflict key takes default values: {no}"
    if isinstance(sel, ast.SelectStmt) and sel.valuesLists:  # DEFAULT is not a value
        pos = {inscols.index(k) for k in keys}
        if any(
            isinstance(v, ast.SetToDefault) and i in pos
            for row in sel.valuesLists
            for i, v in enumerate(row)
        ):
            return None, f"conflict key takes default values: {no}"
        sel.valuesLists = tuple(
            tuple(ast.A_Const(isnull=True) if isinstance(v, ast.SetToDefault) else v for v in row)
            for row in sel.valuesLists
        )
    prefix, ok = with_prefix(cx, node.withClause, sel, outer)
    if not ok:
        return None, f"the INSERT reads a data-modifying CTE: {no}"
    refname = rv.alias.aliasname if rv.alias else rv.relname
    assert refname is not None  # the parser always names an alias and a relation
    ref = ident(refname)
    lhs = ", ".join(f"{ref}.{ident(k)}" for k in keys)
    rhs = ", ".join(f"CAST(_ins.{ident(k)} AS {cols[k]})" for k in keys)
    return (
        f"({lhs}) IN ({prefix}SELECT {rhs} FROM ({deparse(sel)}) AS _ins("
        f"{', '.join(map(ident, inscols))}))",
        f"rows whose conflict key ({', '.join(keys)}) an inserted row repeats",
    )


def row_targets(
    cx: Context,
    st: Statement,
    rv: ast.RangeVar,
    where: str | None,
    ok: bool,
    reason: str,
    reads: set[int],
    ops: frozenset[str],
    setcols: set[str] | None,
) -> list[Row]:
    """Targets for the relation a row statement names: itself, or a view's tables."""
    rel = cx.resolve(name_parts(rv))
    if rel is None or rel.relkind not in ("r", "p", "v"):
        ddl.whole(cx, st, rel, deparse(rv), "")  # the note
        return []
    if rel.relkind == "v":
        bases = cx.base_tables(rel.relid)
        st.notes.append(
            f"{rel.name} is a view: whole tables it reads ("
            + (", ".join(b.name for b in bases) or "none")
            + ")"
        )
        return [
            Row(
                Target(
                    b.relid,
                    b.schema,
                    b.table,
                    None,
                    None,
                    None,
                    False,
                    f"writes through view {rel.name}: cannot bound, whole table",
                ),
                set(),
                ops,
                setcols,
            )
            for b in bases
        ]
    t = Target(
        rel.relid,
        rel.schema,
        rel.table,
        deparse(rv) if where else None,
        where,
        None,
        ok or where is not None,
        reason,
    )
    return [Row(t, reads, ops, setcols)]
