"""A table's definition as a snapshot manifest keeps it (describe): columns, types,
constraints, indexes, sequences, partition key and partitions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from .catalog import catalog_path, columns


def _user_types(conn: psycopg.Connection, type_oids: list[int]) -> list[dict[str, str]]:
    """CREATE statements for the user-defined types these columns use, dependencies first."""
    seen: set[int] = set()
    out: list[dict[str, str]] = []

    def visit(oid: int) -> None:
        if oid in seen:
            return
        seen.add(oid)
        row = conn.execute(
            "SELECT n.nspname, t.typname, t.typtype::text, t.typelem::bigint,"
            " t.typbasetype::bigint,"
            " t.typrelid::bigint, t.typcategory::text, format_type(t.oid, NULL),"
            " t.typnotnull, t.typdefault, format_type(t.typbasetype, t.typtypmod)"
            " FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = %s",
            [oid],
        ).fetchone()
        if row is None:
            return
        nsp, name, kind, elem, base, relid, cat, qname, notnull, default, basename = row
        if cat == "A" and elem:
            visit(elem)
            return
        if nsp in ("pg_catalog", "information_schema"):
            return
        ident = sql.Identifier(nsp, name)
        if kind == "e":
            ddl = _enum_ddl(conn, ident, oid)
        elif kind == "d":
            visit(base)
            ddl = _domain_ddl(conn, ident, oid, basename, default, notnull)
        elif kind == "c":
            ddl = _composite_ddl(conn, ident, relid, visit)
        elif kind == "r":
            ddl = _range_ddl(conn, ident, oid, visit)
        elif kind == "m":
            # A multirange comes with its range type: create that one.
            rng = conn.execute(
                "SELECT rngtypid::bigint FROM pg_range WHERE rngmultitypid = %s", [oid]
            ).fetchone()
            if rng is not None:
                visit(rng[0])
            return
        else:
            return  # a base type from an extension: it must be installed where we restore
        out.append({"name": qname, "schema": nsp, "type": name, "create": ddl.as_string(conn)})

    for oid in type_oids:
        visit(oid)
    return out


def _enum_ddl(conn: psycopg.Connection, ident: sql.Identifier, oid: int) -> sql.Composable:
    labels = [
        r[0]
        for r in conn.execute(
            "SELECT enumlabel FROM pg_enum WHERE enumtypid = %s ORDER BY enumsortorder",
            [oid],
        )
    ]
    return sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
        ident, sql.SQL(", ").join(sql.Literal(x) for x in labels)
    )


def _domain_ddl(
    conn: psycopg.Connection,
    ident: sql.Identifier,
    oid: int,
    basename: str,
    default: str | None,
    notnull: bool,
) -> sql.Composable:
    checks = [
        r[0]
        for r in conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contypid = %s"
            " AND contype = 'c' ORDER BY conname",
            [oid],
        )
    ]
    return sql.SQL("CREATE DOMAIN {} AS {}{}{}{}").format(
        ident,
        sql.SQL(basename),
        sql.SQL(" DEFAULT {}").format(sql.SQL(default)) if default else sql.SQL(""),
        sql.SQL(" NOT NULL") if notnull else sql.SQL(""),
        sql.SQL("").join(sql.SQL(" {}").format(sql.SQL(c)) for c in checks),
    )


def _composite_ddl(
    conn: psycopg.Connection, ident: sql.Identifier, relid: int, visit: Callable[[int], None]
) -> sql.Composable:
    """CREATE TYPE of a composite type (visit() goes to its attributes' types first)."""
    attrs = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), atttypid::bigint"
        " FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum",
        [relid],
    ).fetchall()
    for _n, _t, toid in attrs:
        visit(toid)
    return sql.SQL("CREATE TYPE {} AS ({})").format(
        ident,
        sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t, _ in attrs
        ),
    )


def _range_ddl(
    conn: psycopg.Connection, ident: sql.Identifier, oid: int, visit: Callable[[int], None]
) -> sql.Composable:
    """CREATE TYPE of a range type (visit() goes to its subtype first)."""
    sub = conn.execute(
        "SELECT rngsubtype::bigint, format_type(rngsubtype, NULL)"
        " FROM pg_range WHERE rngtypid = %s",
        [oid],
    ).fetchone()
    assert sub is not None
    visit(sub[0])
    # PostgreSQL 14+ creates a multirange type with the range: keep its name.
    multi = (
        conn.execute(
            "SELECT format_type(rngmultitypid, NULL) FROM pg_range WHERE rngtypid = %s",
            [oid],
        ).fetchone()
        if conn.info.server_version >= 140000
        else None
    )
    return sql.SQL("CREATE TYPE {} AS RANGE (subtype = {}{})").format(
        ident,
        sql.SQL(sub[1]),
        sql.SQL(", multirange_type_name = {}").format(sql.SQL(multi[0])) if multi else sql.SQL(""),
    )


def describe(conn: psycopg.Connection, relid: int) -> dict[str, Any]:
    """The definition of a table, for a manifest (names schema-qualified)."""
    with catalog_path(conn):
        row = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
            [relid],
        ).fetchone()
        assert row is not None
        nsp, rel, relkind = row
        cols = columns(conn, relid)
        types = _user_types(conn, [c["type_oid"] for c in cols])
        cons = _constraint_rows(conn, relid)
        indexes = _own_indexes(conn, relid)
        seqs = conn.execute(
            "SELECT s.oid::regclass::text, a.attname FROM pg_depend d"
            " JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'"
            " JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
            " WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass"
            " AND d.refobjid = %s AND d.deptype = 'a'",
            [relid],
        ).fetchall()
        col_defs: list[sql.Composable] = [_column_def(c) for c in cols]
        col_defs += [
            sql.SQL("CONSTRAINT {} {}").format(sql.Identifier(n), sql.SQL(d))
            for n, d, k in cons
            if k != "f"
        ]
        part = _partitioning(conn, relid) if relkind == "p" else {}
        create = (
            sql.SQL("CREATE TABLE {} ({}){}")
            .format(
                sql.Identifier(nsp, rel),
                sql.SQL(", ").join(col_defs),
                sql.SQL(" PARTITION BY {}").format(sql.SQL(part["partition_by"]))
                if part
                else sql.SQL(""),
            )
            .as_string(conn)
        )
        parent = conn.execute(
            "SELECT i.inhparent::regclass::text, pg_get_expr(c.relpartbound, c.oid)"
            " FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid"
            " WHERE c.oid = %s AND c.relispartition",
            [relid],
        ).fetchone()
        ident = sql.Identifier(nsp, rel)
        local = _add_constraints(conn, ident, [c for c in cons if c[2] != "f"])
        # What it has from its parent (key, checks): kept for when it must be
        # recreated as a plain table, its parent gone too.
        with_parent = _add_constraints(
            conn, ident, [c for c in _constraint_rows(conn, relid, inherited=True) if c[2] != "f"]
        )
        fks = _add_constraints(conn, ident, [c for c in cons if c[2] == "f"])
    for c in cols:
        c.pop("type_oid")
    out = {
        "schema": nsp,
        "table": rel,
        "relkind": relkind,
        "columns": cols,
        "types": types,
        "create": create,
        "indexes": indexes,
        "foreign_keys": fks,
        "sequences": [{"name": s, "column": a} for s, a in seqs],
        **part,
    }
    if parent:
        out["partition_of"] = {
            "parent": parent[0],
            "bound": parent[1],
            "constraints": local,
            "inherited": with_parent,
        }
    return out


def _column_def(c: dict[str, Any]) -> sql.Composable:
    """A column's definition in CREATE TABLE: type, collation, generation, NOT NULL, default."""
    parts: list[sql.Composable] = [sql.Identifier(c["name"]), sql.SQL(c["type"])]
    if c["collation"]:
        parts.append(sql.SQL("COLLATE {}").format(sql.SQL(c["collation"])))
    if c["generated"]:
        parts.append(sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(c["generated"])))
    if c["identity"]:
        parts.append(
            sql.SQL(
                "GENERATED ALWAYS AS IDENTITY"
                if c["identity"] == "a"
                else "GENERATED BY DEFAULT AS IDENTITY"
            )
        )
    if c["not_null"]:
        parts.append(sql.SQL("NOT NULL"))
    if c["default"]:
        parts.append(sql.SQL("DEFAULT {}").format(sql.SQL(c["default"])))
    return sql.SQL(" ").join(parts)


def _partitioning(conn: psycopg.Connection, relid: int) -> dict[str, Any]:
    """A partitioned table's key and partitions, recursively (call inside catalog_path)."""
    key = conn.execute("SELECT pg_get_partkeydef(%s)", [relid]).fetchone()
    assert key is not None
    parts = []
    for oid, nsp, rel, kind, bound in conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind::text,"
        " pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE i.inhparent = %s AND c.relkind IN ('r', 'p')"
        " ORDER BY n.nspname, c.relname",
        [relid],
    ).fetchall():
        one: dict[str, Any] = {
            "schema": nsp,
            "table": rel,
            "bound": bound,
            **_local_extras(conn, oid, nsp, rel),
        }
        if kind == "p":
            one.update(_partitioning(conn, oid))
        parts.append(one)
    return {"partition_by": key[0], "partitions": parts}


def _constraint_rows(
    conn: psycopg.Connection, relid: int, inherited: bool = False
) -> list[tuple[str, str, str]]:
    """(name, definition, type) of a table's own constraints, or of those it has from a
    parent; foreign keys last."""
    return conn.execute(
        "SELECT conname, pg_get_constraintdef(oid), contype::text FROM pg_constraint"
        " WHERE conrelid = %s AND contype IN ('p', 'u', 'c', 'x', 'f')"
        " AND (coninhcount > 0) = %s ORDER BY contype = 'f', contype, conname",
        [relid, inherited],
    ).fetchall()


def _add_constraints(
    conn: psycopg.Connection, ident: sql.Identifier, rows: list[tuple[str, str, str]]
) -> list[str]:
    return [
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}")
        .format(ident, sql.Identifier(n), sql.SQL(d))
        .as_string(conn)
        for n, d, _k in rows
    ]


def _own_indexes(conn: psycopg.Connection, relid: int) -> list[str]:
    """CREATE INDEX of a table's indexes that no constraint makes, and that are not the
    clones a partition has of its parent's (PostgreSQL makes those when the partition
    is created or attached)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = %s"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid"
            " AND c.conrelid = i.indrelid)"
            " AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)"
            " ORDER BY i.indexrelid",
            [relid],
        )
    ]


def _local_extras(conn: psycopg.Connection, relid: int, nsp: str, rel: str) -> dict[str, list[str]]:
    """A partition's own constraints and indexes: those it has beyond its parent's."""
    own = [c for c in _constraint_rows(conn, relid) if c[2] != "f"]
    return {
        "constraints": _add_constraints(conn, sql.Identifier(nsp, rel), own),
        "indexes": _own_indexes(conn, relid),
    }
