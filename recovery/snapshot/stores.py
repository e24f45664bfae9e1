"""Snapshots: save chosen rows before a risky change, list, verify and drop them.

Two stores, one manifest format:

- the database store (default): per saved table a copy `_recovery.snap_<id>_<n>`
  made with CREATE TABLE AS, and the manifest in `_recovery.snapshots`; written in
  one transaction, so a killed snapshot leaves nothing;
- a directory store (`DIR/NAME/`): per table a zstd-compressed COPY text file and
  `manifest.json`; written under a hidden temporary name, fsynced, then renamed, so a
  half-written snapshot never lists.  It survives the database and restores into
  another one.

Rows are read in one REPEATABLE READ transaction (all tables from the same moment)
with fixed output settings (ISO dates, exact floats, UTF8, UTC), recorded in the
manifest and set again to restore: COPY's text form round-trips every type exactly.
`recovery.restore` puts rows back.

This module holds what is done with snapshots, through a store (`store.Store`: the
database, `dbstore.py`, or a directory, `dirstore.py`): create, list, find, verify and
drop them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from .. import operations
from ..db import DEFAULT_SCHEMA
from ..errors import ConflictError, RecoveryError, first_line
from ..operations import record_end, record_start
from ..schema import require_schema
from .dbstore import db_snapshots, save_db
from .dirstore import DEFAULT_DIR, in_default_dir, read_data, read_rows
from .items import table_item
from .manifest import SETTINGS, Progress, SnapshotInfo, manifest_head, set_output, snapshot_info
from .spec import Spec, check_name, specs_for_sql, table_specs
from .store import store_for

# Also read from here by the CLI, runbooks, the Alembic hook and restore (this was the
# module of every snapshot name): what they use that lives in the modules below.
__all__ = [
    "DEFAULT_DIR",
    "SETTINGS",
    "Progress",
    "SnapshotInfo",
    "Spec",
    "VerifyResult",
    "check_name",
    "create",
    "db_snapshots",
    "drop",
    "find",
    "list_snapshots",
    "read_data",
    "read_rows",
    "save_in_transaction",
    "specs_for_sql",
    "table_specs",
    "verify",
]


def create(
    conn: psycopg.Connection,
    name: str,
    specs: Sequence[Spec],
    *,
    store: str | None = None,
    key: Sequence[str] | None = None,
    source: dict[str, Any] | None = None,
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
) -> SnapshotInfo:
    """Save the rows of each spec into the database store (store None or "db") or a directory.

    Everything is read in one REPEATABLE READ transaction.  Nothing is left behind
    on failure: the database store writes in that transaction, the directory store
    under a hidden temporary directory that is removed (or, if the process dies,
    never lists).

    It commits as it goes (the operation's record, then the snapshot in a transaction
    of its own, whose rows a second session may read): refused inside an open
    transaction (RecoveryError).  save_in_transaction() saves inside one.
    """
    check_name(name)
    if not specs:
        raise RecoveryError("nothing to save: name a table with --table, or a file with --for-sql")
    operations.refuse_in_transaction(
        conn,
        "snapshot create",
        "the operation's record, then a REPEATABLE READ transaction "
        "of its own; save_in_transaction() saves inside yours",
    )
    target = store_for(store, schema)
    # Bad input (a snapshot that exists, a table without a key, a --key or column that
    # is not there) is refused before the operation is recorded: exit 1 leaves no
    # trace, as elsewhere.
    with conn.transaction():
        target.refuse_existing(conn, name)
        for spec in specs:
            table_item(conn, 0, spec, key)
    started = time.monotonic()
    with conn.transaction():
        op_id = record_start(conn, schema, "snapshot", {"name": name, "store": store or "db"})
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            manifest = manifest_head(conn, name, source)
            items = []
            for n, spec in enumerate(specs, 1):
                items.append(table_item(conn, n, spec, key))
            set_output(conn)
            target.save(conn, name, specs, items, manifest, progress)
            info = snapshot_info(manifest, target.label)
            record_end(conn, schema, op_id, "done", info.to_dict(), None, started)
    except BaseException as exc:
        target.discard()
        if op_id is not None:
            with conn.transaction():
                record_end(conn, schema, op_id, "failed", None, first_line(exc), started)
            operations.release(conn, op_id)
        raise
    operations.release(conn, op_id)
    return info


def save_in_transaction(
    conn: psycopg.Connection,
    name: str,
    specs: Sequence[Spec],
    *,
    source: dict[str, Any] | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> SnapshotInfo:
    """Save into the database store inside the caller's open transaction (no commit): in
    a savepoint of it (with none open, in a transaction of its own).

    For hooks that snapshot just before a statement of a migration runs, in the
    migration's own transaction: the snapshot commits with the migration, or goes
    with it when it rolls back (then nothing was destroyed).  The output settings
    are changed for this transaction only while saving, then put back (on failure,
    the savepoint's rollback puts them back).
    """
    check_name(name)
    with conn.transaction():
        require_schema(conn, schema)
        items = [table_item(conn, n, spec, None) for n, spec in enumerate(specs, 1)]
        manifest = manifest_head(conn, name, source)
        saved = {
            k: conn.execute("SELECT current_setting(%s)", [k]).fetchone()[0]  # type: ignore[index]
            for k in SETTINGS
        }
        set_output(conn)
        save_db(conn, name, specs, items, manifest, schema, None)
        for k, v in saved.items():
            # Local: a value the migration SET LOCAL stays local, a session one is unchanged.
            conn.execute("SELECT set_config(%s, %s, true)", [k, v])
    return snapshot_info(manifest, "db")


# -- finding snapshots -------------------------------------------------------------
def list_snapshots(
    conn: psycopg.Connection | None,
    *,
    store: str | None = None,
    schema: str = DEFAULT_SCHEMA,
    problems: list[str] | None = None,
) -> list[SnapshotInfo]:
    """Complete snapshots: in the database (store None or "db") or in a directory.

    A directory whose manifest cannot be read (damaged, or from a newer version) is
    left out of the list and named in `problems`, rather than hiding the others.
    """
    return store_for(store, schema).snapshots(conn, problems)


def find(
    conn: psycopg.Connection | None,
    name: str,
    *,
    store: str | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> SnapshotInfo:
    """The snapshot called name: in the given store; else the database, then ./snapshots."""
    check_name(name)  # also keeps a name like ../x inside the store
    found = store_for(store, schema).find(conn, name)
    if found is None and store is None:
        found = in_default_dir(name)
    if found is None:
        raise RecoveryError(
            f"no snapshot {name}: `recovery snapshot list` lists them "
            "(add --store DIR for a directory store)"
        )
    return found


# -- verify and drop ---------------------------------------------------------------
@dataclass
class VerifyResult:
    name: str
    store: str
    ok: bool
    items: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(
    conn: psycopg.Connection | None, info: SnapshotInfo, schema: str = DEFAULT_SCHEMA
) -> VerifyResult:
    """Re-read every saved table; raise ConflictError (exit 2) naming what is damaged."""
    results = []
    bad = []
    store = store_for(info.store, schema)
    for item in info.manifest["items"]:
        label = f"{item['schema']}.{item['table']}"
        where, problem = store.verify_item(conn, info, item)
        results.append(
            {
                "table": label,
                "data": where,
                "rows": item["rows"],
                "ok": problem is None,
                "problem": problem,
            }
        )
        if problem:
            bad.append(f"{where} ({label}): {problem}")
    res = VerifyResult(info.name, info.store, not bad, results)
    if bad:
        raise ConflictError(f"snapshot {info.name} is damaged: " + "; ".join(bad), res)
    return res


def drop(conn: psycopg.Connection | None, info: SnapshotInfo, schema: str = DEFAULT_SCHEMA) -> None:
    """Remove a snapshot and its data (a database one in a transaction of its own, or a
    savepoint of the caller's)."""
    store_for(info.store, schema).drop(conn, info)
