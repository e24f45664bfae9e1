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

import json
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from ..db import DEFAULT_SCHEMA
from ..errors import RecoveryError
from . import pgoutput
from .wal import (
    lsn_text,
    lsn_value,
    slot_exists,
    slot_state,
)
from .walrows import DrainResult, Ids, Table, Writer, finish, record_position

# The most rows in one journal statement the drain makes (see `run` in _drain).
_RUN_ROWS = 100_000
_REL = struct.Struct(">I")  # the relation oid after a change message's first byte
# How long a drain waits for `capture follow` to journal what it needs (seconds).
FOLLOW_WAIT = 60.0
# Messages fetched from the server per round trip.
_FETCH = 5000
# ... and at most about this many bytes of them.
_FETCH_BYTES = 16 << 20


def _widen(xid: int, next_full: int) -> int:
    """A 32-bit xid as the 64-bit one txid_current() reports, by the epoch of next_full."""
    epoch = next_full >> 32
    if xid > (next_full & 0xFFFFFFFF):
        epoch -= 1
    return (epoch << 32) | xid


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


def _message(
    prefix: str, content: bytes, secret: str, who_prefix: str, ours: tuple[str, ...]
) -> Any:
    """The document of one of recovery's messages, or None: another prefix, or a message
    without the hooks' key (pg_logical_emit_message is open to every role), or one that
    does not read.  Never raises: a message must not stop the drain."""
    if prefix != who_prefix and prefix not in ours:
        return None
    try:
        doc = json.loads(bytes(content))
        if prefix == who_prefix:
            ok = isinstance(doc, list) and len(doc) == 6 and doc[5] == secret
            return doc if ok and int(doc[3]) >= 0 and int(doc[4]) > 0 else None
        return doc if isinstance(doc, dict) and doc.get("k") == secret else None
    except (ValueError, TypeError, KeyError):
        return None


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


def journal_messages(
    conn: psycopg.Connection,
    schema: str,
    messages: Iterable[list[bytes]],
    progress: Callable[[int], None] | None = None,
) -> DrainResult:
    """Write the changes of a stream of pgoutput messages (whole transactions, in commit
    order) into the journal, in the caller's transaction, with the position reached."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("SELECT {}.wal_lock()").format(s))
    row = conn.execute(
        sql.SQL(
            "SELECT (SELECT value FROM {s}.meta WHERE key = 'wal_lsn'),"
            " (SELECT value::int FROM {s}.meta WHERE key = 'gen'),"
            " txid_snapshot_xmax(txid_current_snapshot()), (SELECT k FROM {s}.wal_key)"
        ).format(s=s)
    ).fetchone()
    assert row is not None
    applied = lsn_value(row[0])
    gen = int(row[1])
    next_full = int(row[2])
    secret = str(row[3])
    tables: dict[int, Table] = {}
    for relid, tid, shape, key, stopped_why in conn.execute(
        sql.SQL(
            "SELECT DISTINCT ON (c.relid) c.relid, c.table_id, c.wal_shape,"
            " ARRAY(SELECT col.jcol FROM {s}.columns col WHERE col.table_id = c.table_id"
            "       AND col.attnum = ANY(c.key_attnums)), c.stopped"
            " FROM {s}.captured c WHERE c.source = 'wal' ORDER BY c.relid, c.table_id DESC"
        ).format(s=s)
    ):
        tables[int(relid)] = Table(
            int(tid),
            [(str(a), str(b)) for a, b in shape] if shape is not None else None,
            frozenset(key),
            # Stopped by an earlier drain: not journaled again until `capture enable`
            # rebuilds it (a gap in the middle of its history would be worse).
            stopped=bool(stopped_why and str(stopped_why).startswith("WAL capture stopped")),
        )
    by_tid = {t.tid: t for t in tables.values()}
    ids = Ids(conn, schema)
    out = Writer(conn, schema, gen)
    result = DrainResult()
    chunks: set[int] = set()
    shapes_changed: set[int] = set()
    fixups: list[tuple[int, int, int]] = []  # (gen, provisional id, real id) of TRUNCATEs
    stopped: dict[int, str] = {}
    who: tuple[str, str | None, str | None] = ("unknown", None, None)
    depths: dict[int, int] = {}  # per table: the trigger depth of its statements now
    forged = 0  # messages with recovery's prefixes that recovery did not write
    counted = 0
    skip = False
    at: datetime | None = None
    txid = 0
    last_commit = 0
    last_at: datetime | None = None
    # The current journal statement: [tid, op, stmt id, rows so far, keys of its
    # before-images, {key: hash} of its after-images].  The WAL does not say where one
    # SQL statement ends: consecutive changes of one table and operation in a
    # transaction form one journal statement, and a new one starts where a row would be
    # changed a second time, which is what the undo engine needs of a statement (every
    # row in it changed once): a before-image whose key is among the run's before-
    # images, or equals one of its after-images (the row this run produced, changed
    # again; a key swapped within one statement has another row's image there), or an
    # after-image whose key is among its after-images.  Runs are also cut every
    # _RUN_ROWS rows, which bounds the memory of those sets.
    run: list[Any] | None = None
    who_prefix = f"recovery.who:{schema}"
    shape_prefix = f"recovery.shape:{schema}"
    trunc_prefix = f"recovery.truncate:{schema}"

    def close_run() -> None:
        nonlocal run
        if run is not None and run[3] > 0:
            out.stmts.append(
                (gen, run[2], run[0], chr(run[1]), txid, at, who[0], who[1], who[2], run[6], run[3])
            )
            result.statements += 1
        run = None

    def stop(t: Table, why: str) -> None:
        if not t.stopped:
            t.stopped = True
            stopped[t.tid] = why

    for batch in messages:
        for data in batch:
            kind = data[0]
            if kind in (0x49, 0x55, 0x44):  # I, U, D: the hot path
                if skip:
                    continue
                t = tables.get(_REL.unpack_from(data, 1)[0])
                if t is None or t.stopped:
                    continue
                if t.shape is None:
                    stop(t, "the drain met a change before the table's shape message")
                    continue
                try:
                    _, okind, bline, aline, bkey, akey, n = pgoutput.change(data, t.key_pos())
                except (ValueError, IndexError) as exc:
                    stop(t, f"a change in the WAL could not be read ({exc})")
                    continue
                if kind != 0x49 and okind != "O":
                    stop(
                        t,
                        "the WAL carried no whole old row (replica identity is not FULL): "
                        "before-images were lost from here on",
                    )
                    continue
                if n != len(t.shape):
                    stop(t, "the WAL's columns do not match the journal's (shape changed unseen)")
                    continue
                if (
                    run is None
                    or run[0] != t.tid
                    or run[1] != kind
                    or run[3] >= _RUN_ROWS
                    or (bkey is not None and (bkey in run[4] or run[5].get(bkey) == hash(bline)))
                    or (akey is not None and akey in run[5])
                ):
                    close_run()
                    if t.tid not in chunks:
                        conn.execute(sql.SQL("SELECT {}.wal_chunk(%s, %s)").format(s), [t.tid, gen])
                        chunks.add(t.tid)
                    run = [t.tid, kind, ids.next(), 0, set(), {}, depths.get(t.tid, 1)]
                run[3] += 1
                head = b"%d\t%d\t%d\t" % (gen, run[2], run[3])
                buf = out.buffer(t)
                before = len(buf)
                if bline is not None:
                    run[4].add(bkey)
                    buf += head
                    buf += b"B\t"
                    buf += bline
                    buf += b"\n"
                    result.rows += 1
                if aline is not None:
                    run[5][akey] = hash(aline)
                    buf += head
                    buf += b"A\t"
                    buf += aline
                    buf += b"\n"
                    if bline is None:
                        result.rows += 1
                out.grew(len(buf) - before)
                continue
            m = pgoutput.parse(data)
            tag = m[0]
            if tag == "B":
                skip = m[1] <= applied
                at = pgoutput.pg_time(m[2])
                txid = _widen(m[3], next_full)
                who = ("unknown", None, None)
                depths.clear()
                run = None
            elif tag == "C":
                if not skip:
                    close_run()
                    if result.statements > counted:  # a transaction that changed a table
                        result.transactions += 1
                        counted = result.statements
                    last_commit = max(last_commit, m[1])
                    last_at = at
                    if progress is not None:
                        progress(result.rows)
                run = None
            elif tag == "M" and not skip:
                prefix, content = m[2], m[3]
                doc = _message(prefix, content, secret, who_prefix, (shape_prefix, trunc_prefix))
                if doc is None:
                    forged += prefix in (who_prefix, shape_prefix, trunc_prefix)
                elif prefix == who_prefix:
                    # [user, application, tag, trigger depth, table id, key]
                    now = (str(doc[0]), doc[1] or None, doc[2] or None)
                    d, wtid = int(doc[3]), int(doc[4])
                    if now != who or (run is not None and run[0] == wtid and run[6] != d):
                        close_run()
                    who = now
                    depths[wtid] = d
                elif prefix == shape_prefix:
                    close_run()
                    t2 = by_tid.get(int(doc["t"]))
                    if t2 is not None:
                        shape = [(str(a), str(b)) for a, b in doc["c"]]
                        t2.reshape(shape)
                        shapes_changed.add(t2.tid)
                        # Journal columns added by this DDL hold values from here on: an id
                        # of their own, so that two DDLs between two changes stay ordered.
                        conn.execute(
                            sql.SQL(
                                "UPDATE {s}.columns SET since_stmt = %s WHERE table_id = %s"
                                " AND jcol = ANY(%s) AND since_stmt >= {s}.wal_pending()"
                            ).format(s=s),
                            [ids.next(), t2.tid, [j for _, j in shape]],
                        )
                elif prefix == trunc_prefix:
                    close_run()
                    fixups.append((int(doc["g"]), int(doc["p"]), ids.next()))
            elif tag == "R" and not skip:
                t3 = tables.get(m[1])
                if t3 is not None and t3.shape is not None and not t3.stopped:
                    if list(m[5]) != [a for a, _ in t3.shape]:
                        stop(
                            t3,
                            "the table's columns changed while capture could not follow: "
                            "run `recovery capture enable` again",
                        )
    close_run()
    out.flush()
    finish(conn, schema, result, fixups, [by_tid[t] for t in shapes_changed], stopped)
    if forged:
        conn.execute(
            sql.SQL("INSERT INTO {}.events (kind, detail) VALUES ('wal', %s)").format(s),
            [
                f"{forged} message(s) under recovery's prefixes without the hooks' key were "
                "ignored (written by someone else with pg_logical_emit_message)"
            ],
        )
    if last_commit:
        record_position(conn, schema, lsn_text(last_commit), last_at)
    return result


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
