"""The analysis's data: what a statement could destroy, and what it is built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass
class Target:
    """Rows (where; None = every row) or columns of a table that a statement could destroy."""

    relid: int  # pg_class oid of the table (relkind 'r' or 'p')
    schema: str
    table: str
    from_sql: str | None  # the table as the statement named it; None iff where is None
    where: str | None  # rows: SELECT tableoid, ctid FROM {from_sql} WHERE {where}
    columns: tuple[str, ...] | None  # None = whole rows; else only these columns are at risk
    bounded: bool  # False: fell back to the whole table (where is then None)
    reason: str
    est_rows: int | None = None  # filled by estimate() (an addition to the brief's fields)
    est_bytes: int | None = None


@dataclass
class Statement:
    """One statement of the file (number and line 1-based) and what it could destroy."""

    number: int
    line: int
    text: str
    kind: str
    targets: list[Target]
    notes: list[str]
    est_rows: int | None = None
    est_bytes: int | None = None


class Rel(NamedTuple):
    relid: int
    schema: str
    table: str
    relkind: str

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class Row:
    """A row target being built, with what widening and FK cascades need."""

    target: Target
    reads: set[int]  # tables its WHERE reads
    ops: frozenset[str] = frozenset()  # 'delete' / 'update': the FK actions it fires
    setcols: set[str] | None = None  # columns an update assigns (None: any)


@dataclass
class Scan:
    """What code the analysis cannot bound (DO, function bodies...) may destroy."""

    found: dict[int, Rel] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)  # functions already read
    gaps: list[str] = field(default_factory=list)  # why `found` may be incomplete
    called: list[str] = field(default_factory=list)  # volatile user functions called
