"""What an undo reports: per table and for the whole operation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Progress = Callable[[str, int], None]


@dataclass
class TableResult:
    table: str
    table_id: int
    changes: int = 0
    reinsert: int = 0
    restore: int = 0
    delete: int = 0
    already: int = 0
    conflicts: int = 0
    partial: int = 0
    conflict_examples: list[dict[str, Any]] = field(default_factory=list)
    inserted: int = 0
    updated: int = 0
    deleted: int = 0


@dataclass
class RollbackReport:
    """What an undo would do (dry run) or did."""

    op_id: int | None
    status: str
    selector: dict[str, Any]
    on_conflict: str
    dry_run: bool
    tables: list[TableResult]
    undo_tag: str | None
    seconds: float = 0.0
    batches: int = 0
    sql: list[str] = field(default_factory=list)
    approval: int | None = None  # the approval request it consumed, or is pending on

    @property
    def conflicts(self) -> int:
        return sum(t.conflicts for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conflicts"] = self.conflicts
        d.pop("sql")
        return d


def undo_tag(op_id: int) -> str:
    """The tag carried by the writes of undo operation op_id (so it can be undone too)."""
    return f"recovery-undo-{op_id}"
