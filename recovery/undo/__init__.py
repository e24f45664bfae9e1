"""Undo: plan the net inverse of the selected captured changes and apply it.

`engine` is the operation (rollback, resume_rollback); `plan` builds the net tables and
the report's counts, `apply` applies them (in one transaction or in committed batches
that resume), `record` keeps the operation's record, `run` holds one undo's state and
per-table steps, `report` its results; `net_sql` and `apply_sql` compose the SQL.
"""

from .engine import RollbackReport, TableResult, resume_rollback, rollback, undo_tag

__all__ = ["RollbackReport", "TableResult", "resume_rollback", "rollback", "undo_tag"]
