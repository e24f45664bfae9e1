"""Reading the catalog with every name schema-qualified (search_path = pg_catalog), and a
relation's columns."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg


@contextmanager
def catalog_path(conn: psycopg.Connection) -> Iterator[None]:
    """Within the block, names are printed schema-qualified (search_path = pg_catalog)."""
    row = conn.execute("SELECT current_setting('search_path')").fetchone()
    assert row is not None
    conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
    try:
        yield
    except BaseException:
        # A failed statement aborted the transaction: resetting the path would fail too
        # and hide the real error behind "current transaction is aborted" (the setting
        # is transaction-local, so the rollback undoes it anyway).
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            conn.execute("SELECT set_config('search_path', %s, true)", [row[0]])
        raise
    conn.execute("SELECT set_config('search_path', %s, true)", [row[0]])


def columns(conn: psycopg.Connection, relid: int) -> list[dict[str, Any]]:
    """Every live column of a relation, in attribute order (call inside catalog_path)."""
    out = []
    for attnum, name, typ, notnull, default, generated, identity, coll, typid in conn.execute(
        "SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
        " pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text, a.attidentity::text,"
        " CASE WHEN a.attcollation <> t.typcollation THEN"
        "  (SELECT quote_ident(n.nspname) || '.' || quote_ident(co.collname)"
        "   FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace"
        "   WHERE co.oid = a.attcollation) END, a.atttypid::bigint"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
        " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        [relid],
    ):
        out.append(
            {
                "name": name,
                "type": typ,
                "attnum": attnum,
                "not_null": notnull,
                "default": default if not generated else None,
                "generated": default if generated else None,
                "identity": identity or None,
                "collation": coll,
                "type_oid": typid,
            }
        )
    return out
