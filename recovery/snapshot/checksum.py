"""Checksums of a database-store snapshot table: computed over the copy (db_checksum,
which verify recomputes), or by a second session while the rows are copied."""

from __future__ import annotations

import threading

import psycopg
from psycopg import sql

from .manifest import set_output
from .spec import Spec

# Checksum of a row x: "record" by the column types' hash functions, "text" by its text.
# Schema-qualified, with exact argument types: no look-alike function can be chosen.
CHECKSUM_EXPRS = {
    "record": "pg_catalog.hash_record_extended(x, 0::int8)",
    "text": "pg_catalog.hashtextextended(x::text, 0::int8)",
}


class SideChecksum:
    """The checksum of a whole table's rows, computed by a second session while the
    first copies them (CREATE TABLE AS uses one core; this uses another).

    The second session imports the first one's snapshot (pg_export_snapshot), so it
    reads exactly the rows being copied, with the same output settings, and computes
    what db_checksum computes over the copy (same types, same hash), which `verify`
    recomputes later.  Only for a whole table whose rows the first session has not
    written (a snapshot in its own transaction), and only when big enough to pay for
    a connection; anything unexpected (no second connection allowed, an error) falls
    back to reading the copy, so this changes the time taken, never the result.
    """

    MIN_PAGES = 2000  # about 16 MB: below that, a second read of the copy is cheap

    def __init__(self, side: psycopg.Connection, query: sql.Composable) -> None:
        self.query = query
        self.out: tuple[int, str, str] | None = None
        self.side = side
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @classmethod
    def start(
        cls, conn: psycopg.Connection, spec: Spec, query: sql.Composable
    ) -> SideChecksum | None:
        if spec.where is not None or (spec.parts and not all(p.where is None for p in spec.parts)):
            return None  # a WHERE may call now() or random(): read the copy instead
        facts = conn.execute(
            "SELECT coalesce(sum(c.relpages), 0), coalesce(bool_or(c.relrowsecurity), false),"
            " current_user = session_user, (SELECT format('%%I.%%I', n.nspname, t.relname)"
            "  FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace WHERE t.oid = %s)"
            " FROM pg_class c WHERE c.oid = %s"
            " OR c.oid IN (SELECT relid FROM pg_partition_tree(%s))",
            [spec.relid, spec.relid, spec.relid],
        ).fetchone()
        # Another role (SET ROLE) or row security could let a second session see other
        # rows: then read the copy.
        if not facts or facts[0] < cls.MIN_PAGES or facts[1] or not facts[2]:
            return None
        # The copy's lock first: a DDL queued on the table then waits for this session,
        # and the second session, which asks for the same lock with a short
        # lock_timeout, gives up (the copy is read instead) rather than waiting behind
        # that DDL while this session waits for it.
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.SQL(facts[3])))
        # (Not in a savepoint: a snapshot cannot be exported from a subtransaction.)
        snap_id = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        side = None
        try:
            kwargs = {"password": conn.info.password} if conn.info.password else {}
            side = psycopg.connect(conn.info.dsn, **kwargs)  # type: ignore[arg-type]
            side.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            side.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snap_id)))
            set_output(side)
            # One core for each session: no parallel workers competing with the copy.
            side.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            side.execute("SET LOCAL lock_timeout = '500ms'")
            return cls(side, query)
        except BaseException as exc:
            if side is not None:
                side.close()
            if isinstance(exc, psycopg.Error):
                return None
            raise

    def _run(self) -> None:
        exprs = CHECKSUM_EXPRS
        try:
            for m in ("record", "text"):
                try:
                    with self.side.transaction():
                        row = self.side.execute(
                            sql.SQL(
                                "SELECT count(*), coalesce(sum({}), 0)::text FROM ({}) x"
                            ).format(sql.SQL(exprs[m]), self.query)
                        ).fetchone()
                except (psycopg.errors.UndefinedFunction, psycopg.errors.FeatureNotSupported):
                    continue
                if row is not None:
                    self.out = (int(row[0]), str(row[1]), m)
                return
        except psycopg.Error:
            self.out = None

    def result(self) -> tuple[int, str, str] | None:
        """Wait for the checksum (None if it could not be had); close the session."""
        try:
            self.thread.join()
        except BaseException:  # interrupted while waiting: stop the server's scan too
            self.side.cancel()
            raise
        finally:
            if not self.thread.is_alive():
                self.side.close()
        return self.out


def db_checksum(
    conn: psycopg.Connection, schema: str, table: str, method: str | None = None
) -> tuple[int, str, str]:
    """Row count, an order-independent checksum of a snapshot table's rows, and its method.

    The sum of a 64-bit hash of each row: any changed, lost or added row changes it
    (but for a 2^-64 chance).  "record": the column types' own hash functions
    (hash_record_extended, PostgreSQL 14+), about twice as fast as "text": a hash of
    each row's text, for tables with a type that has no hash function (json, xml,
    point...).  The record hash follows each type's equality, so it does not see a
    change between equal values (numeric 1.0 and 1.00); the text hash does.
    """
    exprs = CHECKSUM_EXPRS
    for m in [method] if method else ["record", "text"]:
        # sum(bigint) adds in 128-bit integers: the same value as a numeric sum (so
        # checksums recorded by earlier versions still verify), without a numeric
        # conversion per row.
        query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} x").format(
            sql.SQL(exprs[m]), sql.Identifier(schema, table)
        )
        try:
            with conn.transaction():
                row = conn.execute(query).fetchone()
        except (psycopg.errors.UndefinedFunction, psycopg.errors.FeatureNotSupported):
            if method:
                raise
            continue
        assert row is not None
        return int(row[0]), str(row[1]), m
    raise AssertionError("unreachable: the text hash works for every type")
