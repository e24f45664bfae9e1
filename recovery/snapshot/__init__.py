"""Snapshots: save the rows a change could destroy, verify them, list and drop them.

`stores` holds creation, listing, verification and the two stores (the database and a
directory); `tabledef` describes tables in manifests and recreates them; `sqlscope`
reads a SQL file and says what each statement could destroy (`--for-sql`).
`recovery.restore` puts a snapshot's rows back.
"""

from .stores import (
    DEFAULT_DIR,
    FORMAT,
    Part,
    SnapshotInfo,
    Spec,
    VerifyResult,
    check_name,
    check_where,
    create,
    drop,
    find,
    list_snapshots,
    read_data,
    read_rows,
    save_in_transaction,
    specs_for_sql,
    table_specs,
    verify,
)

__all__ = [
    "DEFAULT_DIR",
    "FORMAT",
    "Part",
    "SnapshotInfo",
    "Spec",
    "VerifyResult",
    "check_name",
    "check_where",
    "create",
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
