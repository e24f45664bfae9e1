"""Undo: plan the net inverse of the selected captured changes and apply it.

`engine` plans, checks conflicts under row locks, applies (in one transaction or in
committed batches that resume) and records the operation; `queries` composes its SQL.
"""

from .engine import RollbackReport, TableResult, resume_rollback, rollback, undo_tag

__all__ = ["RollbackReport", "TableResult", "resume_rollback", "rollback", "undo_tag"]
