"""The database store: per saved table a copy `_recovery.snap_<id>_<n>` made with
CREATE TABLE AS, and the manifest in `_recovery.snapshots`; written in one
transaction, so a killed snapshot leaves nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..errors import RecoveryError
from ..schema import installed_version, require_schema
from .checksum import SideChecksum, db_checksum
from .items import select_rows
from .manifest import Progress, SnapshotInfo, check_format, set_output, snapshot_info
from .spec import Spec


class DbStore:
    """The database store (`--store db`, the default) of one recovery schema."""

    label = "db"

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def refuse_existing(self, conn: psycopg.Connection, name: str) -> None:
        """Raise RecoveryError when a snapshot called name exists already (or the
        recovery schema is missing)."""
        schema = self.schema
        require_schema(conn, schema)
        exists = conn.execute(
            sql.SQL("SELECT 1 FROM {}.snapshots WHERE name = %s").format(sql.Identifier(schema)),
            [name],
        ).fetchone()
        if exists:
            raise RecoveryError(f"snapshot {name} exists already: drop it or choose another name")

    def save(
        self,
        conn: psycopg.Connection,
        name: str,
        specs: Sequence[Spec],
        items: list[tuple[dict[str, Any], list[str]]],
        manifest: dict[str, Any],
        progress: Progress | None,
    ) -> None:
        """Write the snapshot in create's REPEATABLE READ transaction."""
        save_db(conn, name, specs, items, manifest, self.schema, progress, concurrent=True)

    def discard(self) -> None:
        """Nothing to remove after a failed save: the transaction's rollback took it."""

    def snapshots(
        self, conn: psycopg.Connection | None, problems: list[str] | None
    ) -> list[SnapshotInfo]:
        if conn is None:
            raise RecoveryError("no database given: pass --db, or --store DIR for a directory")
        return [snapshot_info(m, "db") for m in db_snapshots(conn, self.schema).values()]

    def find(self, conn: psycopg.Connection | None, name: str) -> SnapshotInfo | None:
        if conn is None:
            return None
        found = db_snapshots(conn, self.schema).get(name)
        if found is None:
            return None
        return snapshot_info(check_format(found, f"snapshot {name}"), "db")

    def verify_item(
        self, conn: psycopg.Connection | None, info: SnapshotInfo, item: dict[str, Any]
    ) -> tuple[str, str | None]:
        """Where a saved table is, and what is wrong with it (None: nothing)."""
        schema = self.schema
        assert conn is not None
        # Rolled back: the output settings go with it (a caller's transaction,
        # when one is open, keeps its own).
        with conn.transaction() as tx:
            set_output(conn)
            try:
                rows, check, _m = db_checksum(
                    conn, schema, item["data"], item.get("checksum_method", "text")
                )
                problem = None
                if rows != item["rows"]:
                    problem = f"{rows} rows, the manifest says {item['rows']}"
                elif check != item["checksum"]:
                    problem = "checksum differs from the one recorded at creation"
            except psycopg.errors.UndefinedTable:
                problem = "data table is missing"
            raise psycopg.Rollback(tx)
        return f"{schema}.{item['data']}", problem

    def drop(self, conn: psycopg.Connection | None, info: SnapshotInfo) -> None:
        """Remove a snapshot and its tables, in a transaction of its own or a savepoint
        of the caller's."""
        schema = self.schema
        assert conn is not None
        with conn.transaction():
            for item in info.manifest["items"]:
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, item["data"]))
                )
            conn.execute(
                sql.SQL("DELETE FROM {}.snapshots WHERE name = %s").format(sql.Identifier(schema)),
                [info.name],
            )


def save_db(
    conn: psycopg.Connection,
    name: str,
    specs: Sequence[Spec],
    items: list[tuple[dict[str, Any], list[str]]],
    manifest: dict[str, Any],
    schema: str,
    progress: Progress | None,
    concurrent: bool = False,
) -> None:
    """Write a database-store snapshot in the caller's transaction.

    concurrent: the transaction has written none of the saved rows and is REPEATABLE
    READ (so a second session can import its snapshot): checksums may be computed
    by a second session while the rows are copied (SideChecksum)."""
    snap_id = conn.execute(
        sql.SQL(
            "INSERT INTO {}.snapshots (name, manifest) VALUES (%s, '{{}}') RETURNING snap_id"
        ).format(sql.Identifier(schema)),
        [name],
    ).fetchone()[0]  # type: ignore[index]
    for (item, cols), spec in zip(items, specs):
        data = f"snap_{snap_id}_{item['n']}"
        # A column of a type that is not built in is saved in its storage type (the
        # text form, or a domain's built-in base type), so that no snapshot table
        # depends on an application's type: the migration that drops the type (or
        # the extension) runs, and DROP ... CASCADE cannot take the saved values.
        stored = _storage_types(conn, schema, spec.relid, cols)
        item["columns"] = [
            {**c, "stored": stored[c["name"]]} if c["name"] in stored else c
            for c in item["columns"]
        ]
        select = select_rows(conn, spec, cols, stored)
        side = SideChecksum.start(conn, spec, select) if concurrent else None
        try:
            cur = conn.execute(
                sql.SQL("CREATE TABLE {} AS {}").format(sql.Identifier(schema, data), select)
            )
        except BaseException:
            if side:
                side.side.cancel()  # do not read on for a copy that failed
                side.result()
            raise
        got = side.result() if side else None
        if got is not None and got[0] == cur.rowcount:
            rows, checksum, method = got
        else:
            rows, checksum, method = db_checksum(conn, schema, data)
        item.update(
            data=data,
            rows=rows,
            checksum=checksum,
            checksum_method=method,
            bytes=_relsize(conn, schema, data),
        )
        manifest["items"].append(item)
        if progress:
            progress(item["bytes"])
    conn.execute(
        sql.SQL("UPDATE {}.snapshots SET manifest = %s WHERE snap_id = %s").format(
            sql.Identifier(schema)
        ),
        [json.dumps(manifest), snap_id],
    )


def _storage_types(
    conn: psycopg.Connection, schema: str, relid: int, cols: Sequence[str]
) -> dict[str, str]:
    """The saved columns whose type is not built in, and the built-in type each is
    stored in: the journal's storage type (text, or a domain's built-in base type)."""
    found = conn.execute(
        sql.SQL(
            "SELECT a.attname::text, {}.storage_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped"
            " AND a.atttypid >= 16384"
        ).format(sql.Identifier(schema)),
        [relid],
    ).fetchall()
    return {name: typ for name, typ in found if name in cols}


def _relsize(conn: psycopg.Connection, schema: str, table: str) -> int:
    row = conn.execute(
        "SELECT pg_total_relation_size(%s::regclass)",
        [sql.Identifier(schema, table).as_string(conn)],
    ).fetchone()
    return int(row[0]) if row else 0


def db_snapshots(conn: psycopg.Connection, schema: str) -> dict[str, dict[str, Any]]:
    with conn.transaction():
        if installed_version(conn, schema) is None:
            return {}
        require_schema(conn, schema)
        rows = conn.execute(
            sql.SQL("SELECT name, manifest FROM {}.snapshots ORDER BY snap_id").format(
                sql.Identifier(schema)
            )
        ).fetchall()
    return {n: m for n, m in rows}
