"""What the WAL source does around the drain: leave it (a table moved back to the trigger
source), drop its slot when no table uses it, and the polling `follow`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
from psycopg import sql

from ..db import DEFAULT_SCHEMA
from ..errors import RecoveryError
from .drain import catch_up, drain
from .wal import SlotState, slot_exists, slot_state, twin
from .walrows import DrainResult


def _wal_tables(conn: psycopg.Connection, s: sql.Identifier) -> bool:
    """Whether any table is captured from the WAL."""
    row = conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {}.captured WHERE enabled AND source = 'wal')"
        ).format(s)
    ).fetchone()
    return bool(row and row[0])


def drop_slot_if_unused(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> bool:
    """Drop the slot and the publication once no table is captured from the WAL (a slot
    nobody drains keeps WAL forever).  Drains first; True when they were dropped."""
    s = sql.Identifier(schema)
    with conn.transaction():
        if _wal_tables(conn, s):
            return False
        present = slot_exists(conn, schema)
    if present:
        drain(conn, schema=schema)
    with conn.transaction():
        # Under the lock an enable takes too: a table enabled meanwhile keeps the slot.
        conn.execute(sql.SQL("SELECT {}.wal_lock()").format(s))
        if _wal_tables(conn, s):
            return False
        pub = conn.execute(sql.SQL("SELECT {}.wal_publication()").format(s)).fetchone()
        assert pub is not None
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(pub[0])))
        conn.execute(sql.SQL("DELETE FROM {}.meta WHERE key IN ('wal_lsn', 'wal_at')").format(s))
        conn.execute(
            sql.SQL(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = {s}.wal_slot()"
            ).format(s=s)
        )
    return True


def follow(
    conn: psycopg.Connection,
    *,
    schema: str = DEFAULT_SCHEMA,
    interval: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[DrainResult, SlotState]]:
    """Drain continuously: one drain every `interval` seconds until `stop()` is true;
    yields what each drain wrote and the slot's lag after it."""
    while not stop():
        started = time.monotonic()
        result = catch_up(conn, schema)
        with conn.transaction():
            state = slot_state(conn, schema)
        yield result, state
        while not stop() and time.monotonic() - started < interval:
            time.sleep(min(0.1, interval))


def leave_wal(conn: psycopg.Connection, schema: str, tid: int, table: sql.Identifier) -> None:
    """Take a table off the WAL source inside the enabling transaction, with nothing lost
    or reordered: writers are locked out first, then everything they committed is drained
    (on a second connection: the drain commits), then the table leaves the publication.
    The trigger source's ids come from the same sequence, after the drained ones."""
    # A write takes ROW EXCLUSIVE on the table (or the partition) for the transaction.
    wrote = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid()"
        " AND locktype = 'relation' AND mode = 'RowExclusiveLock' AND relation IN"
        " (SELECT %s::regclass UNION SELECT relid FROM pg_partition_tree(%s::regclass)))",
        [table.as_string(conn), table.as_string(conn)],
    ).fetchone()
    if wrote and wrote[0]:
        # Its changes are in the WAL, but would be read after the table left the
        # source, and lost: the move needs a transaction of its own.
        raise RecoveryError(
            f"this transaction already wrote to {table.as_string(conn)}: move it from the WAL "
            "source to the trigger source in a transaction of its own"
        )
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(table))
    drain_beside(conn, schema)
    conn.execute(sql.SQL("SELECT {}._release_wal(%s)").format(sql.Identifier(schema)), [tid])


def drain_beside(conn: psycopg.Connection, schema: str) -> None:
    """Drain while `conn` holds a transaction open: on a second connection, which commits
    (and waits for nothing of conn's), or on conn itself when its transaction drained
    already and so holds the drain's lock (the second would wait for it forever)."""
    held = conn.execute(sql.SQL("SELECT {}.wal_lock_held()").format(sql.Identifier(schema)))
    row = held.fetchone()
    if row and row[0]:
        drain(conn, schema=schema)
        return
    with twin(conn) as other:
        drain(other, schema=schema)
