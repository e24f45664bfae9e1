"""The WAL capture source's slot: what the server must have, the slot and publication,
and their state (`capture status`).  The drain that empties the slot into the journal
is `drain.py`; the server side (hooks, publication, replica identity) `sql/wal.sql`.
Design and measurements: docs/WAL_CAPTURE.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from ..db import DEFAULT_SCHEMA
from ..errors import RecoveryError


def lsn_value(text: str | None) -> int:
    if not text:
        return 0
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def slot_name(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> str:
    row = conn.execute(sql.SQL("SELECT {}.wal_slot()").format(sql.Identifier(schema))).fetchone()
    assert row is not None
    return str(row[0])


def requirements(conn: psycopg.Connection) -> list[str]:
    """What this server and role lack for WAL capture, each with what to change."""
    problems = []
    row = conn.execute(
        "SELECT current_setting('wal_level'), current_setting('server_version_num')::int,"
        " (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user),"
        " current_setting('max_replication_slots')::int,"
        " (SELECT count(*) FROM pg_replication_slots)"
    ).fetchone()
    assert row is not None
    level, version, privileged, max_slots, used = row
    if level != "logical":
        problems.append(
            f"wal_level is {level}, WAL capture needs logical: set wal_level = logical in "
            "postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart the server"
        )
    if version < 140000:
        problems.append(
            "WAL capture needs PostgreSQL 14 or later (pgoutput's messages); use the "
            "trigger source (--source trigger)"
        )
    if not privileged:
        problems.append(
            "the role running recovery needs the REPLICATION attribute (ALTER ROLE ... "
            "REPLICATION) or superuser to read a replication slot"
        )
    if max_slots - used <= 0:
        problems.append(
            f"no free replication slot (max_replication_slots = {max_slots}, {used} in use): "
            "raise max_replication_slots and restart, or drop an unused slot"
        )
    return problems


# How long creating the slot may wait for the transactions running on the server (s).
SLOT_WAIT = 30


def same_session_conninfo(conn: psycopg.Connection, **extra: str) -> str:
    """The connection string `conn` was opened with (password included), and `extra`."""
    params = {
        o.keyword.decode(): o.val.decode()
        for o in conn.pgconn.info
        if o.val is not None and o.keyword.decode() != "replication"
    }
    return psycopg.conninfo.make_conninfo(**params, **extra)


@contextmanager
def twin(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A second connection to the same database as the same role (for a drain that must
    commit while `conn` holds its transaction open)."""
    other = psycopg.connect(same_session_conninfo(conn))
    try:
        yield other
    finally:
        other.close()


def slot_exists(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> bool:
    row = conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {}.wal_slot())"
        ).format(sql.Identifier(schema))
    ).fetchone()
    return bool(row and row[0])


def ensure_slot(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> bool:
    """Create the publication and the slot when missing; True when the slot was created.

    A slot cannot be created in a transaction that wrote, and its creation waits for
    every transaction running on the server that has an id: so both are made before
    capture is enabled, committed on their own (on a second connection when the
    caller's transaction is open but has written nothing); inside a caller's
    transaction that wrote, the slot would wait for that very transaction: refused."""
    if conn.info.transaction_status == TransactionStatus.IDLE:
        with conn.transaction():
            if _usable(conn, schema):
                return False
        return _create_slot(conn, schema)
    if _usable(conn, schema):
        return False
    wrote = conn.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL").fetchone()
    if wrote and wrote[0]:
        raise RecoveryError(
            "the first table captured from the WAL needs its replication slot, which cannot "
            "be created inside a transaction that wrote: enable WAL capture before the "
            "transaction's writes, or on its own"
        )
    with twin(conn) as other:
        return _create_slot(other, schema)


def _usable(conn: psycopg.Connection, schema: str) -> bool:
    row = conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {}.wal_slot()"
            " AND wal_status IS DISTINCT FROM 'lost')"
        ).format(sql.Identifier(schema))
    ).fetchone()
    return bool(row and row[0])


def _create_slot(conn: psycopg.Connection, schema: str) -> bool:
    s = sql.Identifier(schema)
    with conn.transaction():
        problems = requirements(conn)
        name = slot_name(conn, schema)
        drained = conn.execute(
            sql.SQL(
                "SELECT coalesce((SELECT value FROM {s}.meta WHERE key = 'wal_lsn'),"
                " 'the start of WAL capture') FROM {s}.captured WHERE enabled AND source = 'wal'"
                " LIMIT 1"
            ).format(s=s)
        ).fetchone()
    if problems:
        raise RecoveryError(problems[0])
    with conn.transaction():
        conn.execute(sql.SQL("SELECT {}.wal_prepare()").format(s))
    prev = conn.autocommit
    conn.autocommit = True
    try:
        # A slot that lost WAL it needed can never be read again: replaced.
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = %s AND wal_status = 'lost'",
            [name],
        )
        # Creating a slot waits for every transaction running on the server to end.
        conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{SLOT_WAIT}s")))
        try:
            created = conn.execute(
                "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", [name]
            ).fetchone()
        finally:
            conn.execute("RESET statement_timeout")
    except psycopg.errors.DuplicateObject:
        return False  # made meanwhile by another enable
    except psycopg.errors.QueryCanceled:
        old = conn.execute(
            "SELECT pid, usename, xact_start::text FROM pg_stat_activity"
            " WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
            " ORDER BY xact_start LIMIT 3"
        ).fetchall()
        who = "; ".join(f"pid {p} ({u}, since {t})" for p, u, t in old) or "none seen now"
        raise RecoveryError(
            f"creating replication slot {name} waits for every running transaction to end, "
            f"and some did not within {SLOT_WAIT} s ({who}): end them, or retry when they are done"
        ) from None
    except psycopg.Error as exc:
        raise RecoveryError(
            f"could not create replication slot {name}: {exc.diag.message_primary}"
        ) from None
    finally:
        conn.autocommit = prev
    if drained is not None and created is not None:
        # The journal was complete up to `drained`; nothing between it and the new slot
        # was captured for the WAL-captured tables: say so where the history is read.
        with conn.transaction():
            conn.execute(
                sql.SQL("INSERT INTO {}.events (kind, detail) VALUES ('wal', %s)").format(s),
                [
                    f"replication slot {name} recreated at {created[0]}: changes to "
                    f"WAL-captured tables between {drained[0]} (the last drained WAL position) "
                    f"and {created[0]} were not captured"
                ],
            )
    return True


@dataclass
class SlotState:
    """The slot as `capture status` shows it."""

    name: str
    exists: bool
    lag_bytes: int | None = None
    wal_status: str | None = None
    drained_lsn: str | None = None
    drained_at: str | None = None  # commit time of the last transaction drained
    in_use: bool = True  # some table that still exists is captured from the WAL


def slot_state(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> SlotState:
    s = sql.Identifier(schema)
    row = conn.execute(
        sql.SQL(
            "SELECT {s}.wal_slot(), r.slot_name IS NOT NULL,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), r.confirmed_flush_lsn)::bigint,"
            " r.wal_status, (SELECT value FROM {s}.meta WHERE key = 'wal_lsn'),"
            " (SELECT value FROM {s}.meta WHERE key = 'wal_at'),"
            " EXISTS (SELECT 1 FROM {s}.captured c JOIN pg_class pc ON pc.oid = c.relid"
            "         WHERE c.enabled AND c.source = 'wal')"
            " FROM (SELECT 1) one LEFT JOIN pg_replication_slots r"
            " ON r.slot_name = {s}.wal_slot()"
        ).format(s=s)
    ).fetchone()
    assert row is not None
    return SlotState(str(row[0]), bool(row[1]), row[2], row[3], row[4], row[5], bool(row[6]))


def table_problems(
    conn: psycopg.Connection, schema: str, tid: int, relid: int, slot: SlotState
) -> list[str]:
    """Say plainly why WAL capture is not working for a table, if it is not."""
    exists = conn.execute("SELECT 1 FROM pg_class WHERE oid = %s", [relid]).fetchone()
    if not exists:
        return ["table was dropped: captured history is kept"]
    since = ""
    if slot.drained_lsn:
        since = (
            f" (the journal is complete up to WAL position {slot.drained_lsn}, committed "
            f"{slot.drained_at})"
        )
    if not slot.exists:
        return [
            f"replication slot {slot.name} is missing: changes since the last drain{since} were "
            "not captured; run `recovery capture enable --source wal` to capture again (rows "
            "changed in the gap count as changed by someone else)"
        ]
    if slot.wal_status == "lost":
        return [
            f"replication slot {slot.name} lost WAL it needed (max_slot_wal_keep_size): changes "
            f"since the last drain{since} were not captured; run `recovery capture enable "
            "--source wal` to capture again"
        ]
    found = []
    rels = conn.execute(
        "SELECT r.relid::regclass::text, c.relkind, c.relreplident,"
        " (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = r.relid AND t.tgenabled = 'A'"
        "  AND t.tgname IN (%s || '_wal_who', %s || '_wal_cap', %s || '_wal_t'))"
        " FROM (SELECT %s::oid AS relid UNION SELECT relid FROM pg_partition_tree(%s)) r"
        " JOIN pg_class c ON c.oid = r.relid WHERE c.relkind IN ('r', 'p')",
        [schema, schema, schema, relid, relid],
    ).fetchall()
    for rname, kind, ident, hooks in rels:
        if ident != "f":
            found.append(
                f"{rname} is not at REPLICA IDENTITY FULL: the WAL does not carry its old rows; "
                "run `recovery capture enable` again"
            )
        if hooks < (3 if kind == "r" else 1):
            found.append(
                f"{rname} has a WAL capture hook missing or disabled (who, cap or TRUNCATE); "
                "run `recovery capture enable` again"
            )
    published = conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p"
            " ON p.oid = pr.prpubid WHERE p.pubname = {}.wal_publication() AND pr.prrelid = %s)"
        ).format(sql.Identifier(schema)),
        [relid],
    ).fetchone()
    if not published or not published[0]:
        found.append(
            "the table is not in the WAL capture publication: its changes are not captured; "
            "run `recovery capture enable` again"
        )
    return found
