"""Make the database fit a snapshot before its rows go back.

A table dropped since is recreated from the manifest, a partition dropped since is
created again, a column dropped since is added back (at the end of the table) and,
after the rows are in, gets its default and NOT NULL back; a column whose type
differs, or whose type is gone, is refused before anything changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..capture.tableinfo import Column, TableInfo
from ..errors import RecoveryError
from ..snapshot import tabledef
from .plan import RestoreTable

_i = sql.Identifier


def _current(conn: psycopg.Connection, item: dict[str, Any]) -> int | None:
    row = conn.execute(
        "SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
        " AND c.relkind IN ('r', 'p')",
        [item["schema"], item["table"]],
    ).fetchone()
    return int(row[0]) if row else None


def prepare_table(
    conn: psycopg.Connection, item: dict[str, Any], res: RestoreTable, dry_run: bool = False
) -> tuple[int, bool, list[str]]:
    """Make the table fit the snapshot: recreate it, add back dropped columns.

    Returns (relid, recreated, columns added back).  A saved column whose type
    differs now is refused: restoring it would need a cast that may lose data.
    """
    label = f"{item['schema']}.{item['table']}"
    relid = _current(conn, item)
    recreated = False
    if relid is None:
        res.notes += tabledef.recreate(conn, item["definition"])
        relid = _current(conn, item)
        assert relid is not None
        recreated = True
    else:
        # A dropped partition: its saved rows need it back to have somewhere to go.
        res.notes += tabledef.missing_partitions(conn, item["definition"], dry_run)
    with tabledef.catalog_path(conn):
        now = {c["name"]: c for c in tabledef.columns(conn, relid)}
    added = []
    for c in item["columns"]:
        cur = now.get(c["name"])
        if cur is None:
            coll = (
                sql.SQL(" COLLATE {}").format(sql.SQL(c["collation"]))
                if c["collation"]
                else sql.SQL("")
            )
            with tabledef.catalog_path(conn):
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN {} {}{}").format(
                        _i(item["schema"], item["table"]), _i(c["name"]), sql.SQL(c["type"]), coll
                    )
                )
            added.append(c["name"])
            res.notes.append(f"added column {c['name']} back (at the end of the table)")
        elif cur["type"] != c["type"]:
            raise RecoveryError(
                f"column {c['name']} of {label} is {cur['type']} now, {c['type']} in the "
                f"snapshot: change it back first (ALTER TABLE {label} ALTER COLUMN "
                f"{c['name']} TYPE {c['type']} USING ...), then restore"
            )
    return relid, recreated, added


def table_info(conn: psycopg.Connection, n: int, relid: int, item: dict[str, Any]) -> TableInfo:
    rows = conn.execute(
        "SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',"
        " a.attidentity = 'a', t.typcategory = 'A' OR EXISTS (SELECT 1 FROM pg_type b"
        "  WHERE b.oid = t.typbasetype AND b.typcategory = 'A'), n.nspname, c.relname"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        [relid],
    ).fetchall()
    # A column the database store saved in another type (the text form of a type
    # that is not built in) is read back through a cast to its type now, as the undo
    # reads the journal's; a manifest without "stored" saved it in its own type.
    saved = {c["name"]: c.get("stored") for c in item["columns"]}
    cols = tuple(
        Column(attnum, name, typ, ((name, 0, saved[name] or typ),), False, bool(ident), bool(arr))
        for attnum, name, typ, gen, ident, arr, _n, _c in rows
        if name in saved and not gen
    )
    by_name = {c.name: c for c in cols}
    label = f"{item['schema']}.{item['table']}"
    missing = [k for k in item["key"] if k not in by_name]
    if missing:
        raise RecoveryError(f"key column {missing[0]} of the snapshot is not in {label} now")
    unique = conn.execute(
        "SELECT 1 FROM pg_index WHERE indrelid = %s AND indisunique AND indpred IS NULL"
        " AND indexprs IS NULL AND (SELECT array_agg(k ORDER BY k) FROM unnest(indkey::int2[]) k)"
        " = (SELECT array_agg(k ORDER BY k) FROM unnest(%s::int2[]) k)",
        [relid, [by_name[k].attnum for k in item["key"]]],
    ).fetchone()
    if unique is None:
        raise RecoveryError(
            f"{label} has no unique index on the snapshot's key ({', '.join(item['key'])}) now: "
            "create one, then restore"
        )
    return TableInfo(
        n, relid, rows[0][6], rows[0][7], cols, tuple(by_name[k] for k in item["key"]), ""
    )


def check_types(conn: psycopg.Connection, items: Sequence[dict[str, Any]]) -> None:
    """Refuse, before anything changes, a saved column whose type does not exist now
    (a migration dropped it, or its extension): the message names the column, the
    type and the statements that create it again.  A table that is gone gets its
    enum, domain, composite and range types back with it (tabledef.recreate)."""
    for item in items:
        label = f"{item['schema']}.{item['table']}"
        gone = _current(conn, item) is None
        defined = {t["name"]: t["create"] for t in item["definition"].get("types", [])}
        with tabledef.catalog_path(conn):
            for c in item["columns"]:
                if _type_exists(conn, c["type"]):
                    continue
                # (A manifest from before "requires": the table's types that are gone.)
                needs = c.get("requires") or [{"type": n, "create": d} for n, d in defined.items()]
                missing = [n for n in needs if not _type_exists(conn, n["type"])]
                if gone and all(n["type"] in defined for n in missing):
                    continue  # recreated with the table
                names = ", ".join(n["type"] for n in missing) or c["type"]
                fixes = (
                    "; ".join(n.get("create") or f"create type {n['type']}" for n in missing)
                    or f"create type {c['type']}"
                )
                raise RecoveryError(
                    f"column {c['name']} of {label} has type {c['type']}, which does not "
                    f"exist now ({names} dropped since the snapshot): nothing was restored; "
                    f"create it again ({fixes}), then restore"
                )


def _type_exists(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT to_regtype(%s) IS NOT NULL", [name]).fetchone()
    return bool(row and row[0])


def finish_columns(conn: psycopg.Connection, item: dict[str, Any], added: list[str]) -> list[str]:
    """Give columns added back their NOT NULL and default, where the rows allow."""
    notes = []
    ident = _i(item["schema"], item["table"])
    for c in item["columns"]:
        if c["name"] not in added:
            continue
        if c["default"]:
            with tabledef.catalog_path(conn):
                conn.execute(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
                        ident, _i(c["name"]), sql.SQL(c["default"])
                    )
                )
        if c["not_null"]:
            nulls = conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NULL)").format(
                    ident, _i(c["name"])
                )
            ).fetchone()
            if nulls and not nulls[0]:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(
                        ident, _i(c["name"])
                    )
                )
            else:
                notes.append(
                    f"column {c['name']} was NOT NULL; rows added since the snapshot "
                    "have no value in it, so it is left nullable"
                )
    return notes
