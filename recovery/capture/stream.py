"""`capture follow` over the streaming replication protocol.

A drain with `peek` decodes the slot from its restart point on every call (the restart
point moves only every few seconds), which is cheap for one command and wasteful for a
process that drains every second.  `follow` instead holds a replication connection
(`replication=database`, START_REPLICATION ... LOGICAL): the server decodes each
transaction once and sends it as it commits.  psycopg has no replication API; its `pq`
layer (libpq) speaks COPY BOTH, which is all the protocol needs.

Crash safety is the drain's: the journal rows of a batch of whole transactions and the
position they reach commit together (`journal_messages`), and only then is the server
told (a standby status update) that it may forget them.  A killed `follow` loses
nothing: the server sends again from the last confirmed position, and the journal skips
what it already holds.

While `follow` holds the slot, another drain cannot read it: `drain()` then waits until
`follow` has confirmed the position it needs (see drain._follower_has).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from ..db import DEFAULT_SCHEMA
from ..errors import RecoveryError
from .replication import Stream
from .wal import SlotState, lsn_text, slot_state
from .waljournal import journal_messages
from .walrows import DrainResult


def follow(
    conn: psycopg.Connection,
    *,
    schema: str = DEFAULT_SCHEMA,
    interval: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[DrainResult, SlotState]]:
    """Drain continuously over the streaming protocol until `stop()` is true; yields
    what each batch wrote and the slot's state after it (every `interval` seconds at
    most once)."""
    while True:
        try:
            stream = Stream(conn, schema)
            break
        except RecoveryError as exc:
            # A command draining the slot itself holds it for a moment: try again.
            if "is active for PID" not in str(exc) or stop():
                raise
            time.sleep(0.2)
    s = sql.Identifier(schema)
    try:
        # As the peek drain does: its own journal writes carry a replication origin that
        # the stream skips (PostgreSQL 16); the connection does nothing else.
        with conn.transaction():
            conn.execute(sql.SQL("SELECT {}.wal_origin_begin()").format(s))
        for batch, end in stream.batches(interval, stop):
            result = DrainResult()
            if batch:
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    result = journal_messages(conn, schema, [batch])
            if end:
                stream.confirm(end)
                result.lsn = lsn_text(end)
            with conn.transaction():
                state = slot_state(conn, schema)
            yield result, state
    finally:
        stream.close()
        if conn.info.transaction_status == TransactionStatus.IDLE:
            with conn.transaction():
                conn.execute(sql.SQL("SELECT {}.wal_origin_end()").format(s))
