"""Which tables can be captured, and by which key."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from ..errors import RecoveryError


def key_attnums(
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


def inheritance_problem(conn: psycopg.Connection, relid: int, label: str) -> str | None:
    """Say why a table in a legacy (INHERITS) hierarchy cannot be captured, if it is in one.

    Statement triggers fire only on the table a statement names, and transition
    tables carry the rows of every child in the parent's shape, without the table
    they came from: a write aimed at a child is not seen by the parent's capture, a
    write through the parent is not seen by a child's, and a row put back through
    the parent would land in the parent.  Rather than capture such a table in part,
    recovery refuses it and says so.  (Declarative partitions are captured whole.)
    """
    children = [
        r[0]
        for r in conn.execute(
            "SELECT i.inhrelid::regclass::text FROM pg_inherits i JOIN pg_class p "
            "ON p.oid = i.inhparent WHERE i.inhparent = %s AND p.relkind = 'r' ORDER BY 1",
            [relid],
        )
    ]
    if children:
        more = f" and {len(children) - 3} more" if len(children) > 3 else ""
        return (
            f"{label} has legacy inheritance children ({', '.join(children[:3])}{more}): "
            "writes aimed at a child are not captured by the parent's hooks, and a row "
            "put back through the parent would land in the parent; convert the hierarchy "
            "to declarative partitioning (ATTACH PARTITION) to capture it"
        )
    parents = [
        r[0]
        for r in conn.execute(
            "SELECT i.inhparent::regclass::text FROM pg_inherits i JOIN pg_class p "
            "ON p.oid = i.inhparent WHERE i.inhrelid = %s AND p.relkind = 'r' ORDER BY 1",
            [relid],
        )
    ]
    if parents:
        return (
            f"{label} inherits from {', '.join(parents)} (legacy inheritance): writes "
            "made through the parent (UPDATE of the parent reaching its rows) are not "
            "captured by its hooks; convert the hierarchy to declarative partitioning "
            "(ATTACH PARTITION) to capture it"
        )
    return None
