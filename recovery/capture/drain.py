"""The drain of the WAL capture source: the slot's changes into the journal.

A table captured from the WAL has nothing on its write path but the WAL itself (at
`REPLICA IDENTITY FULL`, so that the old row travels whole) and three hooks that are
idle in an ordinary transaction (`sql/wal.sql`).  `drain()` reads the slot with
`pg_logical_slot_peek_binary_changes` (pgoutput, protocol 1) and writes the journal
the trigger source writes: the same `j_<id>` rows and `stmt` rows, so that nothing
downstream knows which source captured a change.  Design and measurements:
docs/WAL_CAPTURE.md.

Crash safety: the journal rows of the transactions a drain read and the commit LSN of
the last of them commit together; the slot moves past them only after that commit,
and a transaction at or below the recorded LSN is skipped when the slot delivers it
again.  A drain killed at any moment loses nothing and writes nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from ..db import DEFAULT_SCHEMA
from ..errors import RecoveryError
from .wal import (
    slot_exists,
    slot_state,
)
from .waljournal import journal_messages
from .walrows import DrainResult

# How long a drain waits for `capture follow` to journal what it needs (seconds).
FOLLOW_WAIT = 60.0
# Messages fetched from the server per round trip.
_FETCH = 5000
# ... and at most about this many bytes of them.
_FETCH_BYTES = 16 << 20


def drain(
    conn: psycopg.Connection,
    *,
    schema: str = DEFAULT_SCHEMA,
    progress: Callable[[int], None] | None = None,
) -> DrainResult:
    """Write everything committed to WAL-captured tables so far into the journal.

    Cheap when nothing is captured from the WAL (one catalog lookup).  In a
    transaction of its own (then the slot is moved past what it wrote); inside a
    caller's open transaction it writes there and leaves the slot alone, so that a
    rollback of the caller's transaction loses nothing (the next drain writes it again).
    """
    s = sql.Identifier(schema)
    own = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction():
        if not slot_exists(conn, schema):
            return DrainResult()
    upto: str | None = None
    if own:
        # Decoding reads only flushed WAL, and a transaction committed with
        # synchronous_commit = off may not be flushed yet: a commit of our own with
        # synchronous_commit = on flushes everything before it.  The drain goes up to
        # the end of that transaction's message: a record boundary, flushed, so no
        # transaction can straddle it (the slot is later moved exactly there; a
        # position in the middle of a commit record would skip that transaction).
        with conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = on")
            row = conn.execute(sql.SQL("SELECT {}.wal_flush()::text").format(s)).fetchone()
            if row is None or row[0] is None:
                raise RecoveryError(
                    f"schema {schema} is older than this tool's WAL capture: run `recovery init`"
                )
            upto = str(row[0])
    if upto is None:  # inside a caller's transaction: what is flushed; the slot stays
        upto_row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        assert upto_row is not None
        upto = str(upto_row[0])
    if _follower_has(conn, schema, upto, own):
        return DrainResult(lsn=upto)
    if not own:
        with conn.transaction():
            result = _drain(conn, schema, upto, progress)
    else:
        # Our own session only, and never left set: the origin would hide this
        # connection's later writes (an undo's) from WAL capture.
        with conn.transaction():
            conn.execute(sql.SQL("SELECT {}.wal_origin_begin()").format(s))
        try:
            with conn.transaction():
                # Read committed whatever the connection's default: the drain must see
                # what the drain before it committed, after waiting for its lock.
                conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                result = _drain(conn, schema, upto, progress)
        finally:
            with conn.transaction():
                conn.execute(sql.SQL("SELECT {}.wal_origin_end()").format(s))
    if own:
        _advance(conn, schema, upto)
    result.lsn = upto
    return result


def _advance(conn: psycopg.Connection, schema: str, upto: str) -> None:
    """Move the slot to `upto` (its journal rows are committed).  When `capture follow`
    took the slot meanwhile, it moves it itself: nothing is lost either way."""
    s = sql.Identifier(schema)
    deadline = time.monotonic() + 10
    while True:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SELECT {}.wal_lock()").format(s))
                conn.execute(sql.SQL("SELECT {}.wal_advance(%s::pg_lsn)").format(s), [upto])
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                return  # moved by whoever holds it; nothing is lost meanwhile
            time.sleep(0.02)


def _follower_has(conn: psycopg.Connection, schema: str, upto: str, own: bool) -> bool:
    """When `capture follow` streams from the slot (which then cannot be read here), wait
    until it has journaled and confirmed everything up to `upto`: True.  False when
    nobody holds the slot (this drain reads it itself), also when the follower stops
    while we wait.  Waits at most FOLLOW_WAIT seconds, then says so."""
    q = sql.SQL(
        "SELECT active_pid, confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
        " WHERE slot_name = {}.wal_slot()"
    ).format(sql.Identifier(schema))
    deadline = time.monotonic() + FOLLOW_WAIT
    while True:
        if own:
            with conn.transaction():
                row = conn.execute(q, [upto]).fetchone()
        else:
            row = conn.execute(q, [upto]).fetchone()
        if row is None or row[0] is None or row[0] == conn.info.backend_pid:
            return False
        if row[1]:
            return True
        if time.monotonic() > deadline:
            raise RecoveryError(
                f"`recovery capture follow` (server pid {row[0]}) holds the WAL capture slot "
                f"and has not journaled up to {upto} within {FOLLOW_WAIT:.0f} s: check that "
                "it is running well (its log), or stop it; nothing was changed"
            )
        time.sleep(0.05)


def _peeked(conn: psycopg.Connection, schema: str, upto: str) -> Iterator[list[bytes]]:
    """The slot's messages up to `upto`, in batches, read with peek (the slot stays)."""
    fetch = _FETCH
    with conn.cursor("recovery_wal_drain", binary=True) as cur:
        cur.execute(
            sql.SQL("SELECT data FROM {}.wal_peek(%s::pg_lsn)").format(sql.Identifier(schema)),
            [upto],
        )
        while True:
            batch = [r[0] for r in cur.fetchmany(fetch)]
            if not batch:
                return
            # Bounded memory whatever the rows' size: fewer messages per round trip
            # when they are large.
            nbytes = sum(map(len, batch))
            fetch = max(1, min(_FETCH, fetch * 2, fetch * _FETCH_BYTES // max(nbytes, 1)))
            yield batch


def _drain(
    conn: psycopg.Connection,
    schema: str,
    upto: str,
    progress: Callable[[int], None] | None,
) -> DrainResult:
    return journal_messages(conn, schema, _peeked(conn, schema, upto), progress)


def catch_up(
    conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA, *, required: bool = True
) -> DrainResult:
    """Drain before reading the journal, so that no committed change is missed.

    For every command that reads the journal.  Does nothing where the schema is not
    installed (the command's own check says so).  Errors name what to do.  With
    `required=False` (the commands that only show the journal: a viewer's role may not
    drain), a role without the right to drain reads what was drained last."""
    try:
        with conn.transaction():
            present = conn.execute(
                "SELECT to_regprocedure(%s) IS NOT NULL", [f'"{schema}".wal_slot()']
            ).fetchone()
            if present and present[0]:
                present = conn.execute(
                    sql.SQL(
                        "SELECT {}.wal_slot() IN (SELECT slot_name FROM pg_replication_slots)"
                    ).format(sql.Identifier(schema))
                ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return DrainResult()  # no access to the schema: the command's own check says so
    if not present or not present[0]:
        return DrainResult()
    try:
        try:
            return drain(conn, schema=schema)
        except psycopg.errors.ObjectInUse:
            # `capture follow` took the slot between the look and the read: it holds
            # it now, and drain() waits for it instead.
            return drain(conn, schema=schema)
    except psycopg.errors.InsufficientPrivilege as exc:
        if not required:
            return DrainResult(problems=[f"not drained: {exc.diag.message_primary}"])
        raise RecoveryError(
            f"cannot read the WAL capture slot: {exc.diag.message_primary}; run this as the "
            "recovery schema's owner, or keep `recovery capture follow` running"
        ) from None
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        with conn.transaction():
            state = slot_state(conn, schema)
        since = f" after WAL position {state.drained_lsn}" if state.drained_lsn else ""
        raise RecoveryError(
            f"WAL capture: {exc.diag.message_primary}: changes to WAL-captured tables{since} "
            "were not captured; run `recovery capture enable TABLE... --source wal` for the "
            "tables `recovery capture status` shows as stopped to capture again, then this "
            "command (rows changed in the gap show as conflicts)"
        ) from None
