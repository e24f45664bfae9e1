"""Turning pgoutput messages into journal rows (the drain's core, whatever reads the slot:
`drain.py` with peek, `stream.py` over a replication connection).

The journal rows of the transactions read and the position reached are written in the
caller's transaction; the caller commits them together, then moves the slot.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from . import pgoutput
from .wal import lsn_text, lsn_value
from .walrows import DrainResult, Ids, Table, Writer, finish, record_position

# The most rows in one journal statement the drain makes (see `run` in _drain).
_RUN_ROWS = 100_000
_REL = struct.Struct(">I")  # the relation oid after a change message's first byte


def _widen(xid: int, next_full: int) -> int:
    """A 32-bit xid as the 64-bit one txid_current() reports, by the epoch of next_full."""
    epoch = next_full >> 32
    if xid > (next_full & 0xFFFFFFFF):
        epoch -= 1
    return (epoch << 32) | xid


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
                        conn.execute(
                            sql.SQL("SELECT {}.ensure_chunk(%s, %s)").format(s), [t.tid, gen]
                        )
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
