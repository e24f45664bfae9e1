"""Read a snapshot's saved rows for a restore.

The database store's rows are read where they are; a directory store's file is
streamed with COPY into a temporary table and checked against the manifest's sha256
and row count on the way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import psycopg
import zstandard
from psycopg import sql

from ..errors import ConflictError
from ..snapshot import tabledef
from ..snapshot.stores import Progress, SnapshotInfo, read_data, read_rows

_i = sql.Identifier


def load(
    conn: psycopg.Connection,
    info: SnapshotInfo,
    item: dict[str, Any],
    schema: str,
    progress: Progress | None,
) -> sql.Composable:
    """The relation holding the saved rows: the snapshot table, or a temp table loaded
    by COPY from the directory store (checked against the manifest on the way)."""
    if info.store == "db":
        return _i(schema, item["data"])
    name = f"_snapdata_{item['n']}"
    with tabledef.catalog_path(conn):
        # (Left by an earlier restore in the same open transaction of a caller.)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(_i(name)))
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
                _i(name),
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(_i(c["name"]), sql.SQL(c["type"]))
                    for c in item["columns"]
                ),
            )
        )
    path = Path(info.store) / info.name / item["data"]
    digest = hashlib.sha256()
    try:
        with conn.cursor() as cur:
            with cur.copy(sql.SQL("COPY {} FROM STDIN").format(_i(name))) as cp:
                for chunk in read_data(path, digest):
                    cp.write(chunk)
                    if progress:
                        progress(len(chunk))
            loaded = cur.rowcount
    except FileNotFoundError:
        raise ConflictError(f"{path} is missing: the snapshot is damaged") from None
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
        # Text that COPY rejects: a damaged file, unless the file is what was saved.
        # (A value that breaks a domain's CHECK or NOT NULL is an IntegrityError.)
        if read_rows(path)[0] != item["sha256"]:
            raise ConflictError(
                f"{path} does not match its manifest (sha256): the snapshot "
                "is damaged; nothing was restored"
            ) from None
        raise
    except zstandard.ZstdError as exc:
        raise ConflictError(
            f"{path} cannot be decompressed ({exc}): the snapshot is damaged"
        ) from None
    if digest.hexdigest() != item["sha256"] or loaded != item["rows"]:
        raise ConflictError(
            f"{path} does not match its manifest (sha256 or row count): the "
            "snapshot is damaged; nothing was restored"
        )
    conn.execute(sql.SQL("ANALYZE {}").format(_i(name)))
    return _i(name)


def drop_loaded(conn: psycopg.Connection, items: list[dict[str, Any]]) -> None:
    """Drop the temp tables load() filled from a directory store's files."""
    for item in items:  # the loaded copies of the files (else kept to the caller's end)
        conn.execute(
            sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(_i(f"_snapdata_{item['n']}"))
        )
