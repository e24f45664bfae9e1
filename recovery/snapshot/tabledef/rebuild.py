"""Recreating a dropped table (and its types, sequences, partitions) from its manifest
definition, and what follows once it holds its rows (sequences, foreign keys)."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from ...errors import RecoveryError
from .catalog import catalog_path


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
            done = _as_partition(conn, definition, ident, label, part_of, notes)
            if done is not None:
                return done
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


def _as_partition(
    conn: psycopg.Connection,
    definition: dict[str, Any],
    ident: sql.Identifier,
    label: str,
    part_of: dict[str, Any],
    notes: list[str],
) -> list[str] | None:
    """Recreate the table as a partition of its parent, when the parent exists (call
    inside catalog_path); return the notes, or None when the parent is gone too."""
    parent = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [part_of["parent"]]).fetchone()
    if not (parent and parent[0]):
        return None
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
        f"recreated table {label} as a partition of {part_of['parent']} ({part_of['bound']})"
    ] + notes


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
