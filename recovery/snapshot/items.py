"""A table's entry in a manifest (its definition, key, columns and the types they need)
and the SELECT of its saved rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import psycopg
from psycopg import sql

from ..capture.eligible import key_attnums
from ..errors import RecoveryError
from .spec import Spec
from .tabledef import catalog_path, describe


def select_rows(
    conn: psycopg.Connection, spec: Spec, cols: Sequence[str], stored: dict[str, str] | None = None
) -> sql.Composable:
    """SELECT of the saved rows and columns of a table; a column in `stored` is cast to
    its storage type (the text form of a non-built-in type, under the output settings)."""
    row = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind = 'r' FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        [spec.relid],
    ).fetchone()
    assert row is not None
    # ONLY: rows of plain inheritance children belong to those tables, and restoring
    # them through the parent would put them in the wrong table.  (A partitioned
    # table's rows are all in its partitions: no ONLY there.)
    tbl = sql.SQL("{}{}").format(
        sql.SQL("ONLY ") if row[2] else sql.SQL(""), sql.Identifier(row[0], row[1])
    )
    stored = stored or {}
    names = sql.SQL(", ").join(
        sql.SQL("(x.{c})::{t} AS {c}").format(c=sql.Identifier(c), t=sql.SQL(stored[c]))
        if c in stored
        else sql.SQL("x.{}").format(sql.Identifier(c))
        for c in cols
    )
    if spec.where is not None:
        return sql.SQL("SELECT {} FROM {} x WHERE ({})").format(names, tbl, sql.SQL(spec.where))
    if not spec.parts or any(p.where is None for p in spec.parts):
        return sql.SQL("SELECT {} FROM {} x").format(names, tbl)
    # Several statements' WHEREs, each over the table as that statement named it
    # (with its alias): the union of the rows, by physical row identity.
    subs = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT tableoid, ctid FROM {} WHERE ({})").format(
            sql.SQL(p.from_sql or ""), sql.SQL(p.where or "true")
        )
        for p in spec.parts
    )
    return sql.SQL("SELECT {} FROM {} x WHERE (x.tableoid, x.ctid) IN ({})").format(
        names, tbl, subs
    )


def table_item(
    conn: psycopg.Connection, n: int, spec: Spec, key: Sequence[str] | None
) -> tuple[dict[str, Any], list[str]]:
    """The manifest entry of a table (without data facts) and the columns to save."""
    d = describe(conn, spec.relid)
    label = f"{d['schema']}.{d['table']}"
    attnums, source = key_attnums(conn, spec.relid, label, key)
    by_num = {c["attnum"]: c["name"] for c in d["columns"]}
    key_cols = [by_num[a] for a in attnums]
    if spec.columns is None:
        cols = [c["name"] for c in d["columns"]]
    else:
        missing = [c for c in spec.columns if c not in by_num.values()]
        if missing:
            raise RecoveryError(f"column {missing[0]!r} not found in table {label}")
        cols = [
            c["name"] for c in d["columns"] if c["name"] in key_cols or c["name"] in spec.columns
        ]
    needs = _type_needs(conn, spec.relid, d.get("types", []))
    item = {
        "n": n,
        "schema": d["schema"],
        "table": d["table"],
        "key": key_cols,
        "key_source": source,
        "all_columns": spec.columns is None,
        "columns": [
            {**c, "requires": needs[c["name"]]} if c["name"] in needs else c
            for c in d["columns"]
            if c["name"] in cols
        ],
        "where": spec.where,
        "parts": [asdict(p) for p in spec.parts],
        # Restore can count (and with --delete-new remove) rows added since the
        # snapshot only when the rows were chosen by the table's own columns.
        "reevaluable": spec.where is not None
        or not spec.parts
        or any(p.where is None for p in spec.parts),
        "definition": d,
    }
    return item, cols


# Per column of a non-built-in type, the types it is made of (through arrays, domains,
# composites' attributes and ranges' subtypes), the deepest first: what a restore needs
# to exist again, and how to make it.  (An array comes with its element type, a
# multirange with its range: they are followed, not listed.)
_TYPE_NEEDS = """
WITH RECURSIVE r(col, t, depth) AS (
    SELECT a.attname::text, a.atttypid, 0 FROM pg_attribute a
    WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid >= 16384
    UNION ALL
    SELECT r.col, s.x, r.depth + 1 FROM r JOIN pg_type pt ON pt.oid = r.t
    CROSS JOIN LATERAL (
        SELECT pt.typelem WHERE pt.typcategory = 'A' AND pt.typelem <> 0
        UNION ALL SELECT pt.typbasetype WHERE pt.typtype = 'd'
        UNION ALL SELECT a.atttypid FROM pg_attribute a WHERE pt.typtype = 'c'
            AND a.attrelid = pt.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL SELECT g.rngsubtype FROM pg_range g WHERE g.rngtypid = pt.oid{multi}
    ) s(x)
    WHERE r.depth < 20 AND s.x >= 16384
)
SELECT r.col, format_type(t.oid, NULL), e.extname, en.nspname,
       CASE WHEN t.typtype = 'e' THEN array(SELECT l.enumlabel::text FROM pg_enum l
            WHERE l.enumtypid = t.oid ORDER BY l.enumsortorder) END
FROM r JOIN pg_type t ON t.oid = r.t
LEFT JOIN pg_depend d ON d.classid = 'pg_type'::regclass AND d.objid = t.oid
    AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
LEFT JOIN pg_extension e ON e.oid = d.refobjid
LEFT JOIN pg_namespace en ON en.oid = e.extnamespace
WHERE NOT (t.typcategory = 'A' AND t.typelem <> 0) AND t.typtype <> 'm'
GROUP BY r.col, t.oid, t.typtype, e.extname, en.nspname
ORDER BY r.col, max(r.depth) DESC, 2
"""
_MULTIRANGE = """
        UNION ALL SELECT g.rngtypid FROM pg_range g WHERE g.rngmultitypid = pt.oid"""


def _type_needs(
    conn: psycopg.Connection, relid: int, types: Sequence[dict[str, str]]
) -> dict[str, list[dict[str, Any]]]:
    """Per column of a non-built-in type, the types a restore needs, dependencies first:
    each with the statement that creates it (an enum's with its labels), or the
    extension it comes from."""
    creates = {t["name"]: t["create"] for t in types}
    out: dict[str, list[dict[str, Any]]] = {}
    with catalog_path(conn):
        multi = sql.SQL(_MULTIRANGE if conn.info.server_version >= 140000 else "")
        found = conn.execute(sql.SQL(_TYPE_NEEDS).format(multi=multi), [relid]).fetchall()
    for col, name, ext, ext_schema, labels in found:
        need: dict[str, Any] = {"type": name}
        if ext:
            need.update(
                extension=ext,
                create=sql.SQL("CREATE EXTENSION {} SCHEMA {}")
                .format(sql.Identifier(ext), sql.Identifier(ext_schema))
                .as_string(conn),
            )
        elif name in creates:
            need["create"] = creates[name]
        if labels is not None:
            need["labels"] = labels
        out.setdefault(col, []).append(need)
    return out
