"""Capture: the hooks that record every change of a captured table into its journal.

`triggers` is the trigger source (statement-level triggers with transition tables);
`journal` reads what was captured (`changes`, `diff`); `tableinfo` maps a captured
table onto its journal columns; `prune` drops old journal chunks.
"""

from .eligible import inheritance_problem, key_attnums
from .triggers import (
    AllTables,
    CaptureState,
    all_tables,
    disable,
    enable,
    enable_all,
    status,
)

__all__ = [
    "AllTables",
    "CaptureState",
    "all_tables",
    "disable",
    "enable",
    "enable_all",
    "inheritance_problem",
    "key_attnums",
    "status",
]
