"""A table's definition as a snapshot manifest keeps it, and its recreation from there.

The definition is read with search_path set to pg_catalog only, so every name in it
(types, sequences, functions in defaults) comes out schema-qualified and means the
same thing in another database.  What is recreated: columns (type, collation, NOT
NULL, default, identity, generated expression), primary key, unique, check and
exclusion constraints, other indexes, the user-defined types the columns use (enum,
domain, composite, range) and serial sequences.  Foreign keys are recreated when the
table they reference exists.  A partitioned table is recreated with its partition key
and its partitions (bounds, sub-partitions, the default partition); the parent's
indexes and constraints reach every partition as PostgreSQL clones them.  A partition
is recreated as a partition of its parent when the parent exists (else as a plain
table, with a note saying how to attach it), with the constraints and indexes it has
beyond its parent's.  Partitions that are foreign tables are not kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from ..errors import RecoveryError


@contextmanager
def catalog_path(conn: psycopg.Connection) -> Iterator[None]:
    """Within the block, names are printed schema-qualified (search_path = pg_catalog)."""
    row = conn.execute("SELECT current_setting('search_path')").fetchone()
    assert row is not None
    conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
    try:
        yield
    except BaseException:
        # A failed statement aborted the transaction: resetting the path would fail too
        # and hide the real error behind "current transaction is aborted" (the setting
        # is transaction-local, so the rollback undoes it anyway).
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            conn.execute("SELECT set_config('search_path', %s, true)", [row[0]])
        raise
    conn.execute("SELECT set_config('search_path', %s, true)", [row[0]])


def columns(conn: psycopg.Connection, relid: int) -> list[dict[str, Any]]:
    """Every live column of a relation, in attribute order (call inside catalog_path)."""
    out = []
    for attnum, name, typ, notnull, default, generated, identity, coll, typid in conn.execute(
        "SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
        " pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text, a.attidentity::text,"
        " CASE WHEN a.attcollation <> t.typcollation THEN"
        "  (SELECT quote_ident(n.nspname) || '.' || quote_ident(co.collname)"
        "   FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace"
        "   WHERE co.oid = a.attcollation) END, a.atttypid::bigint"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
        " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        [relid],
    ):
        out.append(
            {
                "name": name,
                "type": typ,
                "attnum": attnum,
                "not_null": notnull,
                "default": default if not generated else None,
                "generated": default if generated else None,
                "identity": identity or None,
                "collation": coll,
                "type_oid": typid,
            }
        )
    return out


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
            labels = [
                r[0]
                for r in conn.execute(
                    "SELECT enumlabel FROM pg_enum WHERE enumtypid = %s ORDER BY enumsortorder",
                    [oid],
                )
            ]
            ddl: sql.Composable = sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
                ident, sql.SQL(", ").join(sql.Literal(x) for x in labels)
            )
        elif kind == "d":
            visit(base)
            checks = [
                r[0]
                for r in conn.execute(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contypid = %s"
                    " AND contype = 'c' ORDER BY conname",
                    [oid],
                )
            ]
            ddl = sql.SQL("CREATE DOMAIN {} AS {}{}{}{}").format(
                ident,
                sql.SQL(basename),
                sql.SQL(" DEFAULT {}").format(sql.SQL(default)) if default else sql.SQL(""),
                sql.SQL(" NOT NULL") if notnull else sql.SQL(""),
                sql.SQL("").join(sql.SQL(" {}").format(sql.SQL(c)) for c in checks),
            )
        elif kind == "c":
            attrs = conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod), atttypid::bigint"
                " FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped"
                " ORDER BY attnum",
                [relid],
            ).fetchall()
            for _n, _t, toid in attrs:
                visit(toid)
            ddl = sql.SQL("CREATE TYPE {} AS ({})").format(
                ident,
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t, _ in attrs
                ),
            )
        elif kind == "r":
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
            ddl = sql.SQL("CREATE TYPE {} AS RANGE (subtype = {}{})").format(
                ident,
                sql.SQL(sub[1]),
                sql.SQL(", multirange_type_name = {}").format(sql.SQL(multi[0]))
                if multi
                else sql.SQL(""),
            )
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
        col_defs: list[sql.Composable] = []
        for c in cols:
            parts: list[sql.Composable] = [sql.Identifier(c["name"]), sql.SQL(c["type"])]
            if c["collation"]:
                parts.append(sql.SQL("COLLATE {}").format(sql.SQL(c["collation"])))
            if c["generated"]:
                parts.append(
                    sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(c["generated"]))
                )
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
            col_defs.append(sql.SQL(" ").join(parts))
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


def _create_partitions(
    conn: psycopg.Connection,
    parent: sql.Composable,
    parts: list[dict[str, Any]],
    notes: list[str],
    only_missing: bool = False,
    dry_run: bool = False,
) -> None:
    """CREATE TABLE ... PARTITION OF for each partition (and theirs), in the caller's
    transaction.  With only_missing, partitions that exist are left alone."""
    for p in parts:
        ident = sql.Identifier(p["schema"], p["table"])
        exists = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", [ident.as_string(conn)]
        ).fetchone()
        label = f"{p['schema']}.{p['table']}"
        if only_missing and exists and exists[0]:
            pass
        elif only_missing and dry_run:
            # No DDL in a dry run: it would lock the table for the whole plan.
            notes.append(f"partition {label} is gone: the restore recreates it ({p['bound']})")
            continue
        elif only_missing:
            # The layout may have changed since (partitions renamed, merged, the table
            # no longer partitioned): a partition that no longer fits is left out with
            # a note, and the rows go where the table's partitions are now.
            try:
                with conn.transaction():
                    _create_one(conn, ident, parent, p)
            except (
                psycopg.errors.InvalidObjectDefinition,
                psycopg.errors.CheckViolation,
                psycopg.errors.WrongObjectType,
                psycopg.errors.DuplicateTable,
            ) as exc:
                # Only a layout that no longer fits (overlap, rows of it in the default
                # partition, no longer partitioned, name taken); any other error (a
                # lock timeout, a privilege) stops the restore.
                first = (str(exc).strip().splitlines() or ["error"])[0]
                notes.append(f"partition {label} not recreated ({first})")
                continue
            notes.append(f"recreated partition {label} ({p['bound']})")
        else:
            _create_one(conn, ident, parent, p)
            notes.append(f"recreated partition {label} ({p['bound']})")
        if p.get("partitions"):
            _create_partitions(conn, ident, p["partitions"], notes, only_missing, dry_run)


def _ensure_schema(conn: psycopg.Connection, name: str) -> None:
    """CREATE SCHEMA only when it is missing (IF NOT EXISTS still needs the privilege)."""
    row = conn.execute(
        "SELECT to_regnamespace(%s) IS NULL", [sql.Identifier(name).as_string(conn)]
    ).fetchone()
    if row and row[0]:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))


def _create_one(
    conn: psycopg.Connection, ident: sql.Identifier, parent: sql.Composable, p: dict[str, Any]
) -> None:
    _ensure_schema(conn, p["schema"])
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} {}{}").format(
            ident,
            parent,
            sql.SQL(p["bound"]),
            sql.SQL(" PARTITION BY {}").format(sql.SQL(p["partition_by"]))
            if p.get("partition_by")
            else sql.SQL(""),
        )
    )
    for ddl in p.get("constraints", []) + p.get("indexes", []):
        conn.execute(sql.SQL(ddl))


def missing_partitions(
    conn: psycopg.Connection, definition: dict[str, Any], dry_run: bool = False
) -> list[str]:
    """Recreate the partitions of an existing partitioned table that are gone; return notes.

    Without them the saved rows of a dropped partition have nowhere to go.  Runs in the
    caller's transaction; a partition that cannot be created now (its range overlaps a
    partition made since, the default partition holds rows of it) is left out with a
    note: its rows go where they fit now, or the restore fails on them, whole.
    """
    notes: list[str] = []
    if definition.get("partitions"):
        with catalog_path(conn):
            _create_partitions(
                conn,
                sql.Identifier(definition["schema"], definition["table"]),
                definition["partitions"],
                notes,
                only_missing=True,
                dry_run=dry_run,
            )
    return notes


def recreate(conn: psycopg.Connection, definition: dict[str, Any]) -> list[str]:
    """Create a dropped table again from its manifest definition; return notes.

    Runs inside the caller's transaction (the restore's), so a failure leaves nothing.
    """
    label = f"{definition['schema']}.{definition['table']}"
    if definition.get("relkind") == "p" and not definition.get("partition_by"):
        # A manifest from before partitioned tables were kept whole.
        raise RecoveryError(
            f"table {label} is gone and was partitioned, and this snapshot does not keep "
            "its partition layout: recreate it and its partitions first, then restore"
        )
    notes: list[str] = []
    inherited: list[str] = []
    ident = sql.Identifier(definition["schema"], definition["table"])
    with catalog_path(conn):
        part_of = definition.get("partition_of")
        if part_of:
            parent = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", [part_of["parent"]]
            ).fetchone()
            if parent and parent[0]:
                _ensure_schema(conn, definition["schema"])
                conn.execute(
                    sql.SQL("CREATE TABLE {} PARTITION OF {} {}{}").format(
                        ident,
                        sql.SQL(part_of["parent"]),
                        sql.SQL(part_of["bound"]),
                        sql.SQL(" PARTITION BY {}").format(sql.SQL(definition["partition_by"]))
                        if definition.get("partition_by")
                        else sql.SQL(""),
                    )
                )
                for con in part_of.get("constraints", []):
                    conn.execute(sql.SQL(con))
                for ix in definition.get("indexes", []):
                    conn.execute(sql.SQL(ix))
                if definition.get("partitions"):
                    _create_partitions(conn, ident, definition["partitions"], notes)
                return [
                    f"recreated table {label} as a partition of {part_of['parent']} "
                    f"({part_of['bound']})"
                ] + notes
            # (Run after the CREATE below, which holds the table's own constraints.)
            inherited = part_of.get("inherited", [])
            notes.append(
                f"{label} was a partition of {part_of['parent']}, which is gone too: "
                f"recreated as a plain table; attach it with ALTER TABLE {part_of['parent']}"
                f" ATTACH PARTITION {label} {part_of['bound']}"
            )
    with catalog_path(conn):
        _ensure_schema(conn, definition["schema"])
        # A sequence a default draws from that is gone, and not the table's own (a
        # partition's default uses its parent's): created, and moved past the rows.
        for name, _col in _drawn_sequences(definition):
            gone = conn.execute("SELECT to_regclass(%s) IS NULL", [name]).fetchone()
            if gone and gone[0]:
                conn.execute(sql.SQL("CREATE SEQUENCE {}").format(sql.SQL(name)))
                notes.append(f"created sequence {name}")
        for t in definition.get("types", []):
            exists = conn.execute("SELECT to_regtype(%s) IS NOT NULL", [t["name"]]).fetchone()
            if exists and not exists[0]:
                # A type may live in another schema than the table's.
                _ensure_schema(conn, t["schema"])
                conn.execute(sql.SQL(t["create"]))
                notes.append(f"created type {t['name']}")
        for s in definition.get("sequences", []):
            conn.execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(sql.SQL(s["name"])))
        conn.execute(sql.SQL(definition["create"]))
        for con in inherited:
            conn.execute(sql.SQL(con))
        for s in definition.get("sequences", []):
            conn.execute(
                sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
                    sql.SQL(s["name"]),
                    sql.Identifier(definition["schema"], definition["table"]),
                    sql.Identifier(s["column"]),
                )
            )
        for ix in definition.get("indexes", []):
            # On a partitioned table with no partition yet, an index ON ONLY it is
            # valid, and each partition created below gets a clone of it.
            conn.execute(sql.SQL(ix))
        if definition.get("partitions"):
            _create_partitions(conn, ident, definition["partitions"], notes)
    return [f"recreated table {label} from the snapshot's definition"] + notes


_NEXTVAL = re.compile(r"^nextval\('((?:[^']|'')+)'::regclass\)$")


def _drawn_sequences(definition: dict[str, Any]) -> list[tuple[str, str]]:
    """(sequence, column) for each column whose default is nextval() of a sequence the
    table does not own."""
    owned = {s["name"] for s in definition.get("sequences", [])}
    out = []
    for c in definition["columns"]:
        m = _NEXTVAL.match(c.get("default") or "")
        if m and m.group(1).replace("''", "'") not in owned:
            out.append((m.group(1).replace("''", "'"), c["name"]))
    return out


def after_load(conn: psycopg.Connection, definition: dict[str, Any]) -> list[str]:
    """Once a recreated table holds its rows: move sequences past them, add foreign keys."""
    notes = []
    ident = sql.Identifier(definition["schema"], definition["table"])
    with catalog_path(conn):
        for s in definition.get("sequences", []):
            conn.execute(
                sql.SQL(
                    "SELECT setval({}, greatest(coalesce(max({}), 0), 1), "
                    "max({}) IS NOT NULL) FROM {}"
                ).format(
                    sql.Literal(s["name"]),
                    sql.Identifier(s["column"]),
                    sql.Identifier(s["column"]),
                    ident,
                )
            )
        for name, col in _drawn_sequences(definition):
            # Shared with other tables maybe: only ever moved forward.
            conn.execute(
                sql.SQL(
                    "SELECT setval({seq}, max({c})) FROM {t} HAVING max({c}) > (SELECT CASE WHEN"
                    " is_called THEN last_value ELSE last_value - 1 END FROM {seqi})"
                ).format(seq=sql.Literal(name), c=sql.Identifier(col), t=ident, seqi=sql.SQL(name))
            )
        for c in definition["columns"]:
            if c.get("identity"):
                conn.execute(
                    sql.SQL(
                        "SELECT setval(pg_get_serial_sequence({}, {}),"
                        " greatest(coalesce(max({}), 0),"
                        " 1), max({}) IS NOT NULL) FROM {}"
                    ).format(
                        sql.Literal(ident.as_string(conn)),
                        sql.Literal(c["name"]),
                        sql.Identifier(c["name"]),
                        sql.Identifier(c["name"]),
                        ident,
                    )
                )
        for fk in definition.get("foreign_keys", []):
            try:
                with conn.transaction():
                    conn.execute(sql.SQL(fk))
            except psycopg.Error as exc:
                first = (str(exc).strip().splitlines() or ["error"])[0]
                notes.append(f"foreign key not recreated ({first}): {fk}")
    return notes
