"""What the drain (`drain.py`) keeps while it turns decoded changes into journal rows: the
state of each WAL-captured table, statement ids, and the COPY buffers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

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
    """Journal rows as COPY text, buffered per table and column list, copied straight
    into the chunks of generation `gen` (no routing through the partitioned parents)."""

    def __init__(self, conn: psycopg.Connection, schema: str, gen: int) -> None:
        self.conn = conn
        self.schema = schema
        self.gen = gen
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
                sql.Identifier(self.schema, f"j_{tid}_{self.gen}"),
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
            ).format(sql.Identifier(self.schema, f"stmt_{self.gen}"))
            with self.conn.cursor().copy(target) as cp:
                for row in self.stmts:
                    cp.write_row(row)
            self.stmts.clear()


def finish(
    conn: psycopg.Connection,
    schema: str,
    result: DrainResult,
    fixups: list[tuple[int, int, int]],
    reshaped: list[Table],
    stopped: dict[int, str],
) -> None:
    """The end of a drain, in its transaction: TRUNCATEs get their statement ids in
    commit order (gen, provisional id, real id), the shapes read are kept for the next
    drain, and tables whose changes could not be journaled are marked stopped."""
    s = sql.Identifier(schema)
    for g, provisional, real in fixups:
        hit = conn.execute(
            sql.SQL(
                "UPDATE {}.stmt SET stmt_id = %s WHERE gen = %s AND stmt_id = %s RETURNING table_id"
            ).format(s),
            [real, g, provisional],
        ).fetchone()
        if hit is not None:
            conn.execute(
                sql.SQL("UPDATE {} SET rec_stmt = %s WHERE rec_gen = %s AND rec_stmt = %s").format(
                    sql.Identifier(schema, f"j_{hit[0]}")
                ),
                [real, g, provisional],
            )
            result.statements += 1
    for t in reshaped:
        conn.execute(
            sql.SQL("UPDATE {}.captured SET wal_shape = %s WHERE table_id = %s").format(s),
            [Jsonb([list(x) for x in t.shape or []]), t.tid],
        )
    for tid, why in stopped.items():
        conn.execute(
            sql.SQL("UPDATE {}.captured SET stopped = %s WHERE table_id = %s").format(s),
            [f"WAL capture stopped: {why}", tid],
        )
        conn.execute(
            sql.SQL("INSERT INTO {}.events (table_id, kind, detail) VALUES (%s, 'wal', %s)").format(
                s
            ),
            [tid, f"capture stopped: {why}"],
        )
        result.problems.append(why)


def record_position(conn: psycopg.Connection, schema: str, lsn: str, at: datetime | None) -> None:
    """The WAL position (and commit time) the journal is complete up to, committed with
    the journal rows: a transaction at or below it is skipped when delivered again."""
    for key, value in (("wal_lsn", lsn), ("wal_at", at.isoformat() if at else None)):
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.meta (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ).format(sql.Identifier(schema)),
            [key, value or ""],
        )
