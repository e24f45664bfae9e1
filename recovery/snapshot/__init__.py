"""Snapshots: save the rows a change could destroy, verify them, list and drop them.

`spec` says what to save (per table, the rows at risk); `stores` saves them through
a store (`store`: the interface; `dbstore`: the database; `dirstore`: a directory),
and lists, finds, verifies and drops them; `manifest` is the format
a snapshot is described in, `items` a table's entry in it and the SELECT of its rows,
`checksum` the database store's checksums; `tabledef` describes tables in manifests
and recreates them; `sqlscope` reads a SQL file and says what each statement could
destroy (`--for-sql`).  `recovery.restore` puts a snapshot's rows back.
"""

from .dirstore import DEFAULT_DIR, read_data, read_rows
from .manifest import FORMAT, SnapshotInfo
from .spec import Part, Spec, check_name, check_where, specs_for_sql, table_specs
from .stores import VerifyResult, create, drop, find, list_snapshots, save_in_transaction, verify

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
