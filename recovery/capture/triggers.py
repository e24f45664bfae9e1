"""Capture hooks: enable, disable and report on change capture per table.

Two sources write the same journal: the trigger source (statement triggers with
transition tables, `sql/capture.sql`) and the WAL source (a logical replication slot
drained into the journal, `wal.py` and `sql/wal.sql`).  Each table has one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from ..db import DEFAULT_SCHEMA, resolve_table
from ..errors import RecoveryError
from ..schema import require_schema
from . import drain, wal, walops
from .eligible import inheritance_problem, key_attnums

SOURCES = ("trigger", "wal")


def default_source() -> str:
    """The source `capture enable` uses when none is named: RECOVERY_CAPTURE_SOURCE, else
    the trigger source (it works on every server, needs no slot and no drain; the WAL
    source is chosen where its cost matters, see README "Capture sources")."""
    value = os.environ.get("RECOVERY_CAPTURE_SOURCE", "").strip() or "trigger"
    if value not in SOURCES:
        raise RecoveryError(f"RECOVERY_CAPTURE_SOURCE is {value!r}: use trigger or wal")
    return value


@dataclass
class CaptureState:
    table: str
    enabled: bool
    key: list[str]
    key_source: str
    source: str
    statements: int
    rows: int
    journal_bytes: int
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        if not self.enabled:
            return "off"
        return "stopped" if self.problems else "on"


def enable(
    conn: psycopg.Connection,
    tables: Sequence[str],
    *,
    key: Sequence[str] | None = None,
    schema: str = DEFAULT_SCHEMA,
    lock_timeout: str = "10s",
    source: str | None = None,
) -> list[str]:
    """Start capturing changes on the given tables; return their qualified names.

    `source` is "trigger" or "wal" (default: `default_source()`).  Enabling a table
    captured from the other source moves it over with one continuous journal: no
    change is journaled twice or missed.

    All tables or none: the work runs in one transaction (a savepoint of the
    caller's, when one is open, which the caller then commits).  Idempotent:
    enabling a captured table rebuilds its hooks (useful after a schema change on a
    server where DDL is not followed automatically).
    """
    if key and len(tables) != 1:
        raise RecoveryError("--key applies to one table at a time")
    source = source or default_source()
    if source not in SOURCES:
        raise RecoveryError(f"unknown capture source {source!r}: use trigger or wal")
    if source == "wal":
        # Before anything changes: what the server lacks, and the slot (made outside the
        # enabling transaction, so that the enabling DDL is in its stream).
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            with conn.transaction():
                require_schema(conn, schema)
                problems = wal.requirements(conn)
        else:
            problems = wal.requirements(conn)
        if problems:
            raise RecoveryError(f"cannot capture from the WAL: {problems[0]}")
        wal.ensure_slot(conn, schema)
    try:
        # The block comes first: a statement before it would open the transaction
        # outside it, and the block would then be a savepoint that nobody commits.
        with conn.transaction():
            require_schema(conn, schema)
            previous = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
            conn.execute("SELECT set_config('lock_timeout', %s, true)", [lock_timeout])
            done = [_enable_one(conn, name, key, schema, source) for name in tables]
            # Inside a caller's transaction, give it back its own lock_timeout.
            conn.execute(
                "SELECT set_config('lock_timeout', %s, true)", [previous[0] if previous else "0"]
            )
    except psycopg.errors.InsufficientPrivilege as exc:
        raise RecoveryError(
            f"not allowed to add capture triggers: {exc.diag.message_primary}; "
            "run as the table's owner"
        ) from None
    except psycopg.errors.LockNotAvailable:
        raise RecoveryError(
            f"could not lock the table within lock_timeout {lock_timeout}: a long transaction "
            "holds it; retry, or end that transaction"
        ) from None
    return done


def _enable_one(
    conn: psycopg.Connection, name: str, key: Sequence[str] | None, schema: str, source: str
) -> str:
    s = sql.Identifier(schema)
    relid, nsp, rel = resolve_table(conn, name)
    label = f"{nsp}.{rel}"
    if nsp == schema:
        raise RecoveryError(f"{label} belongs to recovery itself and cannot be captured")
    parent = conn.execute(
        sql.SQL(
            "SELECT c.schema_name || '.' || c.table_name FROM {}.captured c"
            " WHERE c.enabled AND c.relid <> %s"
            " AND c.relid IN (SELECT relid FROM pg_partition_ancestors(%s))"
        ).format(s),
        [relid, relid],
    ).fetchone()
    if parent:
        raise RecoveryError(
            f"{label} is a partition of {parent[0]}, which is captured already "
            "(writes to the partition are captured there)"
        )
    problem = inheritance_problem(conn, relid, label)
    if problem:
        raise RecoveryError(f"cannot capture {problem}")
    attnums, key_src = key_attnums(conn, relid, label, key)
    # One capture id per table for its whole life, so that history before a
    # disable and after a later enable stays in one journal.
    row = conn.execute(
        sql.SQL(
            "SELECT table_id, enabled, source FROM {}.captured WHERE relid = %s "
            "ORDER BY table_id DESC LIMIT 1"
        ).format(s),
        [relid],
    ).fetchone()
    if row and row[2] == "wal" and source == "trigger":
        if row[1]:
            walops.leave_wal(conn, schema, row[0], sql.Identifier(nsp, rel))
        else:
            # Disabled inside a transaction that could not drain: what the slot holds
            # of the table goes to the journal before triggers capture it anew.
            walops.drain_beside(conn, schema)
    if row:
        tid = row[0]
        conn.execute(
            sql.SQL("UPDATE {}.captured SET source = %s WHERE table_id = %s").format(s),
            [source, tid],
        )
        if not row[1]:
            conn.execute(
                sql.SQL(
                    "UPDATE {}.captured SET enabled = true, enabled_at = clock_timestamp(),"
                    " disabled_at = NULL, stopped = NULL, key_attnums = %s, key_source = %s"
                    " WHERE table_id = %s"
                ).format(s),
                [attnums, key_src, tid],
            )
        if key:
            conn.execute(
                sql.SQL(
                    "UPDATE {}.captured SET key_attnums = %s, key_source = %s WHERE table_id = %s"
                ).format(s),
                [attnums, key_src, tid],
            )
    else:
        new = conn.execute(
            sql.SQL(
                "INSERT INTO {}.captured (relid, schema_name, table_name, key_attnums,"
                " key_source, source) VALUES (%s, %s, %s, %s, %s, %s) RETURNING table_id"
            ).format(s),
            [relid, nsp, rel, attnums, key_src, source],
        ).fetchone()
        assert new is not None
        tid = new[0]
    conn.execute(sql.SQL("SELECT {}.build_capture(%s)").format(s), [tid])
    conn.execute(
        sql.SQL(
            "INSERT INTO {s}.events (table_id, kind, detail, stmt_hwm) "
            "SELECT %s, 'enable', %s, last_value FROM {s}.stmt_seq"
        ).format(s=s),
        [tid, f"source {source}"],
    )
    return label


@dataclass
class AllTables:
    """What `capture enable --all` would take in one schema, and what it leaves out, why."""

    tables: list[str]
    skipped: list[tuple[str, str]]


def all_tables(conn: psycopg.Connection, in_schema: str = "public") -> AllTables:
    """The tables of a schema that `enable_all` captures, and the ones it skips with a reason."""
    with conn.transaction():
        rows = conn.execute(
            "SELECT c.oid, format('%%I.%%I', n.nspname, c.relname), "
            " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "ORDER BY c.relname",
            [in_schema],
        ).fetchall()
        out = AllTables([], [])
        for relid, label, has_key in rows:
            problem = inheritance_problem(conn, relid, label)
            if problem:
                out.skipped.append((label, problem))
            elif not has_key:
                out.skipped.append(
                    (
                        label,
                        f"{label} has no primary key: capture it by name "
                        "with --key COL[,COL] (unique NOT NULL columns)",
                    )
                )
            else:
                out.tables.append(label)
    return out


def enable_all(
    conn: psycopg.Connection, *, in_schema: str = "public", schema: str = DEFAULT_SCHEMA
) -> list[str]:
    """Enable capture on every table with a primary key in one schema.

    Tables of a legacy inheritance hierarchy and tables without a primary key are
    left out; `all_tables()` says which and why.
    """
    found = all_tables(conn, in_schema)
    if not found.tables:
        raise RecoveryError(f"no table with a primary key in schema {in_schema}")
    return enable(conn, found.tables, schema=schema)


def disable(
    conn: psycopg.Connection,
    tables: Sequence[str] | None,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> list[str]:
    """Stop capturing on the given tables (all when None); captured history is kept.

    All or none, in one transaction (a savepoint of the caller's when one is open).
    """
    s = sql.Identifier(schema)
    ids: list[tuple[int, str]] = []
    own = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        require_schema(conn, schema)
        if tables is None:
            ids = [
                (r[0], r[1])
                for r in conn.execute(
                    sql.SQL(
                        "SELECT table_id, schema_name || '.' || table_name FROM {}.captured "
                        "WHERE enabled ORDER BY table_id"
                    ).format(s)
                )
            ]
        else:
            for name in tables:
                relid, nsp, rel = resolve_table(conn, name)
                row = conn.execute(
                    sql.SQL("SELECT table_id FROM {}.captured WHERE relid = %s AND enabled").format(
                        s
                    ),
                    [relid],
                ).fetchone()
                if row is None:
                    raise RecoveryError(f"table {nsp}.{rel} is not captured")
                ids.append((row[0], f"{nsp}.{rel}"))
        for tid, _ in ids:
            # The WAL source: its pending changes stay in the slot (they were published
            # while the table was) and the next drain writes them.
            conn.execute(
                sql.SQL(
                    "SELECT CASE WHEN source = 'wal' THEN {s}._release_wal(table_id) END,"
                    " {s}.drop_capture(table_id) FROM {s}.captured WHERE table_id = %s"
                ).format(s=s),
                [tid],
            )
            conn.execute(
                sql.SQL(
                    "UPDATE {}.captured SET enabled = false, disabled_at = clock_timestamp() "
                    "WHERE table_id = %s"
                ).format(s),
                [tid],
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {s}.events (table_id, kind, stmt_hwm) "
                    "SELECT %s, 'disable', last_value FROM {s}.stmt_seq"
                ).format(s=s),
                [tid],
            )
    if own:
        # What the slot still holds of these tables goes to the journal now (it was
        # published while they were captured), before anything could capture them anew;
        # then the slot goes if no table is captured from the WAL any more.
        # (best effort: the disable is committed; a role that may not drain leaves the
        # backlog to the next drain, and the slot to the owner's next disable)
        drain.catch_up(conn, schema, required=False)
        try:
            walops.drop_slot_if_unused(conn, schema)
        except psycopg.errors.InsufficientPrivilege:
            pass
    return [label for _, label in ids]


def status(conn: psycopg.Connection, *, schema: str = DEFAULT_SCHEMA) -> list[CaptureState]:
    """Report every captured table: state, key, volume, journal size and any problem."""
    with conn.transaction():
        require_schema(conn, schema)
        return _status(conn, schema)


def _status(conn: psycopg.Connection, schema: str) -> list[CaptureState]:
    s = sql.Identifier(schema)
    out = []
    rows = conn.execute(
        sql.SQL(
            "SELECT c.table_id, c.relid, c.schema_name, c.table_name, c.enabled, c.key_source,"
            " c.source,"
            " c.stopped, ARRAY(SELECT a.attname FROM unnest(c.key_attnums) k"
            "   JOIN pg_attribute a ON a.attrelid = c.relid AND a.attnum = k),"
            " (SELECT count(*) FROM {s}.stmt st WHERE st.table_id = c.table_id),"
            " (SELECT coalesce(sum(nrows), 0) FROM {s}.stmt st WHERE st.table_id = c.table_id),"
            " (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)"
            "    FROM pg_partition_tree(to_regclass(format('%I.%I', {lit}, 'j_' || c.table_id)))"
            "    t),"
            " to_regclass(format('%%I.%%I', c.schema_name, c.table_name)) IS NOT NULL"
            " FROM {s}.captured c ORDER BY c.schema_name, c.table_name, c.table_id"
        ).format(s=s, lit=sql.Literal(schema))
    ).fetchall()
    slot: wal.SlotState | None = None
    for row in rows:
        tid, relid, nsp, rel, enabled, key_source, source, stopped, key, nstmt, nrows, size, _ = row
        problems = []
        if stopped:
            problems.append(stopped)
        if enabled and source == "wal":
            slot = slot or wal.slot_state(conn, schema)
            problems += wal.table_problems(conn, schema, tid, relid, slot)
        elif enabled:
            problems += _problems(conn, schema, tid, relid)
        out.append(
            CaptureState(
                f"{nsp}.{rel}",
                enabled,
                list(key),
                key_source,
                source,
                int(nstmt),
                int(nrows),
                int(size),
                problems,
            )
        )
    return out


def _problems(conn: psycopg.Connection, schema: str, tid: int, relid: int) -> list[str]:
    """Say plainly why capture is not working for a table, if it is not."""
    exists = conn.execute("SELECT 1 FROM pg_class WHERE oid = %s", [relid]).fetchone()
    if not exists:
        return ["table was dropped: captured history is kept"]
    problems = []
    label = conn.execute("SELECT %s::oid::regclass::text", [relid]).fetchone()
    inherited = inheritance_problem(conn, relid, label[0] if label else str(relid))
    if inherited:
        problems.append(inherited)
    rels = conn.execute(
        "SELECT r.relid, r.relid::regclass::text, c.relkind FROM "
        "(SELECT %s::oid AS relid UNION SELECT relid FROM pg_partition_tree(%s) ) r "
        "JOIN pg_class c ON c.oid = r.relid WHERE c.relkind IN ('r', 'p')",
        [relid, relid],
    ).fetchall()
    for rid, rname, kind in rels:
        fn = f"cap_{tid}_{rid}"
        # insert, update, delete; and truncate on a table that holds rows.  (The
        # before-statement trigger that records the depth has a function of its own.)
        expected = 4 if kind == "r" else 3
        row = conn.execute(
            sql.SQL(
                "SELECT p.prosrc LIKE '%%' || {s}.shape(%s) || '%%', "
                " (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = %s AND t.tgfoid = p.oid"
                "  AND t.tgenabled = 'A')"
                " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = %s AND p.proname = %s"
            ).format(s=sql.Identifier(schema)),
            [rid, rid, schema, fn],
        ).fetchone()
        if row is None or row[1] < expected:
            problems.append(
                f"{rname} has a capture trigger missing or disabled: capture stopped there; "
                "run `recovery capture enable` again"
            )
        elif not row[0]:
            problems.append(
                f"{rname} changed shape (column added, dropped or retyped): capture stopped "
                "there; run `recovery capture enable` again"
            )
    return problems
