"""recovery: undo a bad deploy's data damage on PostgreSQL, selectively and fast.

The CLI is a thin layer over these functions; each takes a psycopg connection first.
"""

from .capture.journal import changes, diff
from .capture.prune import prune
from .capture.triggers import disable as disable_capture
from .capture.triggers import enable as enable_capture
from .capture.triggers import enable_all as enable_capture_all
from .capture.triggers import status as capture_status
from .db import connect
from .errors import ApprovalRequired, CapExceeded, ConflictError, RecoveryError
from .guardrails.guard import guard, run_guarded
from .marks import create_mark, list_marks
from .operations import list_operations
from .schema import init
from .selector import Selector

# `from recovery import sqlscope` (README): the --for-sql analysis, at its documented name.
from .snapshot import sqlscope
from .undo.engine import resume_rollback, rollback

__all__ = [
    "ApprovalRequired",
    "CapExceeded",
    "ConflictError",
    "RecoveryError",
    "Selector",
    "capture_status",
    "changes",
    "connect",
    "create_mark",
    "diff",
    "disable_capture",
    "enable_capture",
    "enable_capture_all",
    "guard",
    "init",
    "list_marks",
    "list_operations",
    "prune",
    "resume_rollback",
    "rollback",
    "run_guarded",
    "sqlscope",
]
