"""What to save: per table, the rows at risk (Spec, Part), from `--table`/`--where` or
from sqlscope's analysis of a SQL file (`--for-sql`), and the checks of names and WHEREs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..db import resolve_table
from ..errors import RecoveryError, first_line

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class Part:
    """Rows of one table at risk: a WHERE over the table as a statement named it."""

    from_sql: str | None
    where: str | None
    reason: str
    bounded: bool = True


@dataclass
class Spec:
    """What to save of one table (relid), before it is resolved into a manifest item."""

    relid: int
    parts: list[Part] = field(default_factory=list)
    columns: tuple[str, ...] | None = None  # None: whole rows
    where: str | None = None  # the user's --where (restore can re-evaluate it)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RecoveryError(
            f"invalid snapshot name {name!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit), at most 100"
        )
    return name


def check_where(where: str) -> str:
    """A --where must be one boolean expression (PostgreSQL's own parser decides)."""
    import pglast

    try:
        stmts = pglast.parse_sql(f"SELECT 1 WHERE ({where})")  # noqa: S608 (parsed, not run)
    except pglast.parser.ParseError as exc:
        raise RecoveryError(f"--where {where!r} does not parse: {exc.args[0]}") from None
    if len(stmts) != 1:
        raise RecoveryError(f"--where {where!r} must be one boolean expression")
    return where


def table_specs(
    conn: psycopg.Connection, tables: Sequence[str], wheres: Sequence[str]
) -> list[Spec]:
    """Specs for `--table T [--where SQL]`: one --where for one table, or one per table.

    Reads only, in a transaction of its own or a savepoint of the caller's (left open)."""
    if wheres and len(wheres) != len(tables):
        raise RecoveryError(
            "give one --where per --table, in the same order (--where true for a whole table)"
        )
    with conn.transaction():
        return _table_specs(conn, tables, wheres)


def _table_specs(
    conn: psycopg.Connection, tables: Sequence[str], wheres: Sequence[str]
) -> list[Spec]:
    specs = []
    seen = set()
    for n, t in enumerate(tables):
        relid, _s, _t = resolve_table(conn, t)
        if relid in seen:
            raise RecoveryError(f"table {t} is named twice: give it once")
        seen.add(relid)
        where = check_where(wheres[n]) if wheres else None
        if where is not None:
            try:
                with conn.transaction():
                    conn.execute(
                        sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(
                            sql.Identifier(_s, _t), sql.SQL(where)
                        )
                    )
            except psycopg.Error as exc:
                raise RecoveryError(f"--where {where!r} on {_s}.{_t}: {first_line(exc)}") from None
            # The snapshot and the restore read the table under an alias, which hides
            # its name: a column qualified with it (orders.total) would fail there,
            # after the snapshot started.  Refuse it now, with the fix.
            try:
                with conn.transaction():
                    conn.execute(
                        sql.SQL("EXPLAIN SELECT 1 FROM {} AS _where_check WHERE ({})").format(
                            sql.Identifier(_s, _t), sql.SQL(where)
                        )
                    )
            except psycopg.Error:
                raise RecoveryError(
                    f"--where {where!r} on {_s}.{_t}: name the columns without "
                    f"the table name ({_t}.col -> col)"
                ) from None
        specs.append(Spec(relid, where=where))
    return specs


def specs_for_sql(stmts: Sequence[Any]) -> list[Spec]:
    """Specs from sqlscope's analysis: per table, the union of what its statements risk.

    Row parts of one table are united; their columns too (a table that one
    statement updates and another loses a column of is saved whole).
    """
    by_rel: dict[int, Spec] = {}
    for st in stmts:
        for t in st.targets:
            spec = by_rel.setdefault(t.relid, Spec(t.relid, columns=()))
            spec.parts.append(
                Part(t.from_sql, t.where, f"statement {st.number}: {t.reason}", t.bounded)
            )
            if t.columns is None or spec.columns is None:
                spec.columns = None
            else:
                spec.columns = tuple(dict.fromkeys([*spec.columns, *t.columns]))
    return list(by_rel.values())
