"""Restore a snapshot: put saved rows back, selectively, with the undo engine's logic.

A snapshot row is planned exactly like an undo's net row (undo_sql.py), with the
snapshot as the state to restore and the table as it is now as the state "the
change left": a row present now gets its saved values in the columns that differ
(an UPDATE per set of columns, so untouched cells and rows are not written), a row
gone is re-inserted, and with --delete-new a row added since inside the snapshot's
WHERE is deleted (refused while a kept row references it).  Foreign-key order,
suspension of the table's own triggers, row locks, lock_timeout and the apply
statements are the undo engine's.  Conflicts here are rows that change while the
restore runs: rows changed since the snapshot are what a restore is for.

Everything runs in one transaction: a table dropped since is recreated from the
manifest, a column dropped since is added back (at the end of the table), data
from a directory store is streamed with COPY into a temporary table and checked
against the manifest's sha256 and row count on the way; any failure leaves no trace.

The package: `plan` (which tables, one table's counts and restore statements, the
report), `prepare` (recreating what was dropped since, type checks), `load` (the saved
rows, read from the store) and `apply` (restore() and its transaction).
"""

from .apply import restore
from .plan import RestoreReport, RestoreTable

__all__ = ["RestoreReport", "RestoreTable", "restore"]
