"""What the drain (`drain.py`) keeps while it turns decoded changes into journal rows: the
state of each WAL-captured table, statement ids, and the COPY buffers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

# A COPY buffer is sent when it holds this much.
_FLUSH_BYTES = 4 << 20


@dataclass
class DrainResult:
    """What one drain wrote: source transactions, journal statements and rows."""

    transactions: int = 0
    statements: int = 0
    rows: int = 0
    lsn: str | None = None  # the WAL position the journal is complete up to
    problems: list[str] = field(default_factory=list)


@dataclass
class Table:
    tid: int
    shape: list[tuple[str, str]] | None  # (column name, journal column), pgoutput's order
    key_jcols: frozenset[str] = frozenset()
    stopped: bool = False
    _key_pos: tuple[int, ...] | None = None
    buf: bytearray | None = None  # Writer.buffer() of the current shape

    def key_pos(self) -> tuple[int, ...]:
        """Where the row key's values are in pgoutput's columns (for the current shape)."""
        if self._key_pos is None:
            self._key_pos = tuple(
                i for i, (_, j) in enumerate(self.shape or []) if j in self.key_jcols
            )
        return self._key_pos

    def reshape(self, shape: list[tuple[str, str]]) -> None:
        self.shape = shape
        self._key_pos = None
        self.buf = None


class Ids:
    """Statement ids from the shared sequence, fetched in growing blocks."""

    def __init__(self, conn: psycopg.Connection, schema: str) -> None:
        self.conn = conn
        self.q = sql.SQL("SELECT nextval({}) FROM generate_series(1, %s)").format(
            sql.Literal(f'"{schema}".stmt_seq')
        )
        self.pool: deque[int] = deque()
        self.block = 16

    def next(self) -> int:
        if not self.pool:
            self.pool.extend(r[0] for r in self.conn.execute(self.q, [self.block]))
            self.block = min(self.block * 4, 10000)
        return self.pool.popleft()

    def peek(self) -> int:
        value = self.next()
        self.pool.appendleft(value)
        return value


class Writer:
    """Journal rows as COPY text, buffered per table and column list."""

    def __init__(self, conn: psycopg.Connection, schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self.buffers: dict[tuple[int, tuple[str, ...]], bytearray] = {}
        self.size = 0
        self.stmts: list[tuple[Any, ...]] = []

    def buffer(self, t: Table) -> bytearray:
        """The buffer of table t's rows in its current columns (kept across flushes)."""
        if t.buf is None:
            cols = tuple(j for _, j in t.shape or [])
            t.buf = self.buffers.get((t.tid, cols))
            if t.buf is None:
                t.buf = self.buffers[(t.tid, cols)] = bytearray()
        return t.buf

    def grew(self, n: int) -> None:
        self.size += n
        if self.size >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        for (tid, cols), buf in self.buffers.items():
            if not buf:
                continue
            target = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(self.schema, f"j_{tid}"),
                sql.SQL(", ").join(
                    map(sql.Identifier, ("rec_gen", "rec_stmt", "rec_ord", "rec_img", *cols))
                ),
            )
            with self.conn.cursor().copy(target) as cp:
                cp.write(buf)
            buf.clear()
        self.size = 0
        if self.stmts:
            target = sql.SQL(
                "COPY {} (gen, stmt_id, table_id, op, txid, at, db_user, app, tag, depth, nrows)"
                " FROM STDIN"
            ).format(sql.Identifier(self.schema, "stmt"))
            with self.conn.cursor().copy(target) as cp:
                for row in self.stmts:
                    cp.write_row(row)
            self.stmts.clear()
