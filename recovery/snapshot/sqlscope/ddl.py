"""DDL: the whole tables and columns TRUNCATE, DROP and ALTER TABLE destroy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pglast import ast
from pglast.enums import AlterTableType, DropBehavior, ObjectType

from .context import Context
from .model import Rel, Statement, Target
from .nodes import COLUMN_CMDS, deparse, name_parts


def whole(
    cx: Context,
    st: Statement,
    rel: Rel | None,
    label: str,
    reason: str,
    columns: tuple[str, ...] | None = None,
) -> None:
    """A whole-table target, or a note for what is not a table."""
    if rel is None:
        st.notes.append(f"{label} does not exist (yet): nothing of it to save")
    elif rel.relkind == "f":
        st.notes.append(f"{rel.name} is a foreign table: its rows cannot be saved")
    elif rel.relkind not in ("r", "p"):
        st.notes.append(f"{rel.name} is not a table: nothing of it to save")
    else:
        st.targets.append(
            Target(rel.relid, rel.schema, rel.table, None, None, columns, True, reason)
        )


def truncate(cx: Context, st: Statement, node: ast.TruncateStmt) -> None:
    assert node.relations is not None  # TRUNCATE always names a table
    rels = [(rv, cx.resolve(name_parts(rv))) for rv in node.relations]
    for rv, rel in rels:
        whole(cx, st, rel, deparse(rv), "TRUNCATE: whole table")
    if node.behavior == DropBehavior.DROP_CASCADE:
        names = ", ".join(r.name for _, r in rels if r)
        for child in cx.fk_closure([r.relid for _, r in rels if r]):
            whole(cx, st, child, "", f"TRUNCATE CASCADE from {names}: whole table")


def drop(cx: Context, st: Statement, node: ast.DropStmt) -> None:
    """DROP TABLE (with CASCADE: plain inheritance children too), DROP SCHEMA CASCADE,
    DROP TYPE / DOMAIN CASCADE (the columns of that type or its array type)."""
    assert node.removeType is not None and node.objects is not None  # parser sets both
    cascade, kind = node.behavior == DropBehavior.DROP_CASCADE, ObjectType(node.removeType)
    if kind == ObjectType.OBJECT_TABLE:
        rels = []
        for obj in node.objects:
            parts = [s.sval for s in obj][-2:]
            rel = cx.resolve(parts)
            whole(cx, st, rel, ".".join(parts), "DROP TABLE: whole table")
            rels += [rel] if rel else []
        for child in cx.inherit_children([r.relid for r in rels]) if cascade else ():
            whole(cx, st, child, "", "DROP TABLE CASCADE of its parent: whole table")
    elif kind == ObjectType.OBJECT_SCHEMA:
        for obj in node.objects:
            if not cascade:
                st.notes.append(
                    f"DROP SCHEMA {obj.sval} without CASCADE fails unless it "
                    "is empty: nothing to save"
                )
                continue
            rels = cx.rels(
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 3", [obj.sval]
            )
            for rel in rels + cx.inherit_children([r.relid for r in rels]):
                whole(cx, st, rel, "", f"DROP SCHEMA {obj.sval} CASCADE: whole table")
    elif kind == ObjectType.OBJECT_EXTENSION and cascade:
        st.notes.append(
            "cannot bound: DROP EXTENSION ... CASCADE drops the columns of its "
            "types; save those tables with --table"
        )
    elif kind in (ObjectType.OBJECT_TYPE, ObjectType.OBJECT_DOMAIN) and cascade:
        for obj in node.objects:
            for relid, cols in cx.q(
                "SELECT d.objid, array_agg(a.attname::text ORDER BY a.attnum) FROM "
                "pg_type t JOIN pg_depend d ON d.refclassid = 'pg_type'::regclass AND "
                "d.refobjid IN (t.oid, t.typarray) AND d.classid = 'pg_class'::regclass "
                "AND d.objsubid > 0 JOIN pg_attribute a ON a.attrelid = d.objid AND "
                "a.attnum = d.objsubid WHERE t.oid = to_regtype(%s) GROUP BY 1",
                [deparse(obj)],
            ):
                [rel] = cx.rels("WHERE c.oid = %s", [relid])
                if rel.relkind in ("r", "p"):
                    whole(
                        cx,
                        st,
                        rel,
                        "",
                        f"DROP {kind.name[7:]} {deparse(obj)} CASCADE drops these columns",
                        tuple(cols),
                    )


def alter(cx: Context, st: Statement, node: ast.AlterTableStmt) -> None:
    """ALTER TABLE: the columns it drops or retypes (every row); any ALTER TABLE counts
    as writing the table for the widening of later statements."""
    assert node.cmds is not None and node.relation is not None  # parser sets both
    cmds = [c for c in node.cmds if c.subtype in COLUMN_CMDS]
    if node.objtype == ObjectType.OBJECT_TYPE and cmds:
        st.notes.append(
            "cannot bound: ALTER TYPE on attributes changes every column of "
            "that type; save those tables with --table"
        )
    if node.objtype != ObjectType.OBJECT_TABLE:
        return
    rel = cx.resolve(name_parts(node.relation))
    if rel is not None:
        cx.written.setdefault(rel.relid, st.number)
    if not cmds or rel is None or rel.relkind not in ("r", "p"):
        if cmds:
            whole(cx, st, rel, deparse(node.relation), "")  # the note
        return
    have, cols, what = dict(cx.columns(rel.relid)), [], []
    for c in cmds:
        if c.name in have:
            cols.append(c.name)
            what.append(
                ("DROP COLUMN " if c.subtype == AlterTableType.AT_DropColumn else "ALTER TYPE ")
                + c.name
            )
        else:
            st.notes.append(f"column {c.name} of {rel.name} does not exist (yet)")
    if cols:
        whole(
            cx,
            st,
            rel,
            "",
            "; ".join(what) + ": these columns of every row",
            tuple(dict.fromkeys(cols)),
        )


# The DDL statements with an analysis of their own, by parse-node type.
BY_NODE: dict[type[ast.Node], Callable[[Context, Statement, Any], None]] = {
    ast.TruncateStmt: truncate,
    ast.DropStmt: drop,
    ast.AlterTableStmt: alter,
}
