"""Capture hooks: enable, disable and report on change capture per table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from .db import DEFAULT_SCHEMA, resolve_table
from .errors import RecoveryError
from .schema import require_schema


@dataclass
class CaptureState:
    table: str
    enabled: bool
    key: list[str]
    key_source: str
    statements: int
    rows: int
    journal_bytes: int
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        if not self.enabled:
            return "off"
        return "stopped" if self.problems else "on"


def _key_attnums(
    conn: psycopg.Connection, relid: int, table: str, key: Sequence[str] | None
) -> tuple[list[int], str]:
    if not key:
        row = conn.execute(
            "SELECT i.indkey::int2[] FROM pg_index i WHERE i.indrelid = %s AND i.indisprimary",
            [relid],
        ).fetchone()
        if row is None:
            raise RecoveryError(
                f"table {table} has no primary key: add one, or pass --key COL[,COL] "
                "naming unique NOT NULL columns"
            )
        return list(row[0]), "primary key"
    attnums = []
    for col in key:
        row = conn.execute(
            "SELECT attnum, attnotnull FROM pg_attribute WHERE attrelid = %s AND attname = %s "
            "AND attnum > 0 AND NOT attisdropped",
            [relid, col],
        ).fetchone()
        if row is None:
            raise RecoveryError(f"--key column {col!r} not found in table {table}")
        if not row[1]:
            raise RecoveryError(
                f"--key column {col!r} of {table} allows NULL: add NOT NULL, or choose "
                "other columns"
            )
        attnums.append(int(row[0]))
    unique = conn.execute(
        "SELECT 1 FROM pg_index WHERE indrelid = %s AND indisunique AND indpred IS NULL "
        "AND indexprs IS NULL AND (SELECT array_agg(k ORDER BY k) FROM unnest(indkey::int2[]) k)"
        " = (SELECT array_agg(k ORDER BY k) FROM unnest(%s::int2[]) k)",
        [relid, attnums],
    ).fetchone()
    if unique is None:
        raise RecoveryError(
            f"--key {','.join(key)} is not unique in {table}: create a unique index on exactly "
            "those columns, or choose a primary key"
        )
    return attnums, "--key"


def enable(
    conn: psycopg.Connection,
    tables: Sequence[str],
    *,
    key: Sequence[str] | None = None,
    schema: str = DEFAULT_SCHEMA,
    lock_timeout: str = "10s",
) -> list[str]:
    """Start capturing changes on the given tables; return their qualified names.

    Idempotent: enabling a captured table rebuilds its hooks (useful after a
    schema change on a server where DDL is not followed automatically).
    """
    require_schema(conn, schema)
    s = sql.Identifier(schema)
    if key and len(tables) != 1:
        raise RecoveryError("--key applies to one table at a time")
    done = []
    try:
        conn.execute("SELECT set_config('lock_timeout', %s, true)", [lock_timeout])
        for name in tables:
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
            attnums, source = _key_attnums(conn, relid, label, key)
            # One capture id per table for its whole life, so that history before a
            # disable and after a later enable stays in one journal.
            row = conn.execute(
                sql.SQL(
                    "SELECT table_id, enabled FROM {}.captured WHERE relid = %s "
                    "ORDER BY table_id DESC LIMIT 1"
                ).format(s),
                [relid],
            ).fetchone()
            if row:
                tid = row[0]
                if not row[1]:
                    conn.execute(
                        sql.SQL(
                            "UPDATE {}.captured SET enabled = true, enabled_at = clock_timestamp(),"
                            " disabled_at = NULL, stopped = NULL, key_attnums = %s, key_source = %s"
                            " WHERE table_id = %s"
                        ).format(s),
                        [attnums, source, tid],
                    )
                if key:
                    conn.execute(
                        sql.SQL(
                            "UPDATE {}.captured SET key_attnums = %s, key_source = %s "
                            "WHERE table_id = %s"
                        ).format(s),
                        [attnums, source, tid],
                    )
            else:
                tid = conn.execute(
                    sql.SQL(
                        "INSERT INTO {}.captured (relid, schema_name, table_name, key_attnums,"
                        " key_source) VALUES (%s, %s, %s, %s, %s) RETURNING table_id"
                    ).format(s),
                    [relid, nsp, rel, attnums, source],
                ).fetchone()[0]  # type: ignore[index]
            conn.execute(sql.SQL("SELECT {}.build_capture(%s)").format(s), [tid])
            conn.execute(
                sql.SQL(
                    "INSERT INTO {s}.events (table_id, kind, stmt_hwm) "
                    "SELECT %s, 'enable', last_value FROM {s}.stmt_seq"
                ).format(s=s),
                [tid],
            )
            done.append(label)
        conn.commit()
    except psycopg.errors.InsufficientPrivilege as exc:
        conn.rollback()
        raise RecoveryError(
            f"not allowed to add capture triggers: {exc.diag.message_primary}; "
            "run as the table's owner"
        ) from None
    except psycopg.errors.LockNotAvailable:
        conn.rollback()
        raise RecoveryError(
            f"could not lock the table within lock_timeout {lock_timeout}: a long transaction "
            "holds it; retry, or end that transaction"
        ) from None
    except BaseException:
        conn.rollback()
        raise
    return done


def enable_all(
    conn: psycopg.Connection, *, in_schema: str = "public", schema: str = DEFAULT_SCHEMA
) -> list[str]:
    """Enable capture on every table with a primary key in one schema."""
    rows = conn.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
        "ORDER BY c.relname",
        [in_schema],
    ).fetchall()
    if not rows:
        raise RecoveryError(f"no table with a primary key in schema {in_schema}")
    return enable(conn, [r[0] for r in rows], schema=schema)


def disable(
    conn: psycopg.Connection,
    tables: Sequence[str] | None,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> list[str]:
    """Stop capturing on the given tables (all when None); captured history is kept."""
    require_schema(conn, schema)
    s = sql.Identifier(schema)
    ids: list[tuple[int, str]] = []
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
                sql.SQL("SELECT table_id FROM {}.captured WHERE relid = %s AND enabled").format(s),
                [relid],
            ).fetchone()
            if row is None:
                raise RecoveryError(f"table {nsp}.{rel} is not captured")
            ids.append((row[0], f"{nsp}.{rel}"))
    try:
        for tid, _ in ids:
            conn.execute(sql.SQL("SELECT {}.drop_capture(%s)").format(s), [tid])
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
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return [label for _, label in ids]


def status(conn: psycopg.Connection, *, schema: str = DEFAULT_SCHEMA) -> list[CaptureState]:
    """Report every captured table: state, key, volume, journal size and any problem."""
    require_schema(conn, schema)
    s = sql.Identifier(schema)
    out = []
    rows = conn.execute(
        sql.SQL(
            "SELECT c.table_id, c.relid, c.schema_name, c.table_name, c.enabled, c.key_source,"
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
    for tid, relid, nsp, rel, enabled, key_source, stopped, key, nstmt, nrows, size, _ in rows:
        problems = []
        if stopped:
            problems.append(stopped)
        if enabled:
            problems += _problems(conn, schema, tid, relid)
        out.append(
            CaptureState(
                f"{nsp}.{rel}", enabled, list(key), key_source, int(nstmt), int(nrows),
                int(size), problems,
            )
        )
    return out


def _problems(conn: psycopg.Connection, schema: str, tid: int, relid: int) -> list[str]:
    """Say plainly why capture is not working for a table, if it is not."""
    exists = conn.execute("SELECT 1 FROM pg_class WHERE oid = %s", [relid]).fetchone()
    if not exists:
        return ["table was dropped: captured history is kept"]
    problems = []
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
