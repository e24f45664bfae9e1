"""Selectors: which captured changes an operation covers (tag, txid, time, table, user, app)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .db import DEFAULT_SCHEMA, resolve_table, scalar
from .errors import RecoveryError
from .marks import resolve_time


@dataclass(frozen=True)
class Selector:
    """Criteria on captured statements; every given criterion must hold (AND).

    Several values of one criterion (tags, txids, tables, users, apps) are
    alternatives (OR).  `since` and `until` are mark names (`recovery mark`) or
    timestamps PostgreSQL can parse, compared with the time each change was made
    (since inclusive, until exclusive).
    """

    tags: tuple[str, ...] = ()
    txids: tuple[int, ...] = ()
    since: str | None = None
    until: str | None = None
    tables: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    apps: tuple[str, ...] = ()
    # With a table filter, changes that the same transactions cascaded into
    # referencing captured tables (ON DELETE CASCADE / SET NULL) come too.
    follow_cascades: bool = True
    exclude_tags: tuple[str, ...] = field(default=())

    @classmethod
    def from_dict(cls, d: Any) -> Selector:
        """A selector from its as_dict() form, read tolerantly (a report reads stored
        results): a criterion may be one value or a list, under its name (`tags`) or its
        option's (`tag`); other keys, and anything that is not a dict, are ignored."""
        d = d if isinstance(d, dict) else {}

        def many(*keys: str) -> tuple[Any, ...]:
            out: list[Any] = []
            for key in keys:
                v = d.get(key)
                out += [x for x in v if x is not None] if isinstance(v, list) else [v]
            return tuple(x for x in out if x is not None)

        return cls(
            tags=many("tags", "tag"),
            txids=many("txids", "txid"),
            since=d.get("since"),
            until=d.get("until"),
            tables=many("tables", "table"),
            users=many("users", "user"),
            apps=many("apps", "app"),
            follow_cascades=d.get("follow_cascades") is not False,
            exclude_tags=many("exclude_tags", "exclude_tag"),
        )

    def is_empty(self) -> bool:
        return not (
            self.tags
            or self.txids
            or self.since
            or self.until
            or self.tables
            or self.users
            or self.apps
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("follow_cascades") if self.follow_cascades else None
        return {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v not in ((), None)
        }

    def describe(self) -> str:
        parts = []
        for name, values in (
            ("tag", self.tags),
            ("txid", self.txids),
            ("table", self.tables),
            ("user", self.users),
            ("app", self.apps),
        ):
            parts += [f"--{name} {v}" for v in values]
        if self.since:
            parts.append(f"--since {self.since!r}")
        if self.until:
            parts.append(f"--until {self.until!r}")
        return " ".join(parts) or "(all captured changes)"


def table_ids(
    conn: psycopg.Connection, names: Sequence[str], schema: str = DEFAULT_SCHEMA
) -> list[int]:
    """Map table names to their capture ids (every capture period of each table)."""
    ids: list[int] = []
    for name in names:
        relid, nsp, rel = resolve_table(conn, name)
        rows = conn.execute(
            sql.SQL("SELECT table_id FROM {}.captured WHERE relid = %s").format(
                sql.Identifier(schema)
            ),
            [relid],
        ).fetchall()
        if not rows:
            raise RecoveryError(
                f"table {nsp}.{rel} has never been captured: nothing recorded to select"
            )
        ids += [r[0] for r in rows]
    return ids


def _require_known(
    conn: psycopg.Connection, schema: str, column: str, what: str, values: Sequence[str]
) -> None:
    """Raise RecoveryError unless every value appears in the statement journal's column."""
    if not values:
        return
    known = conn.execute(
        sql.SQL("SELECT DISTINCT {c} FROM {s}.stmt WHERE {c} = ANY(%s)").format(
            c=sql.Identifier(column), s=sql.Identifier(schema)
        ),
        [list(values)],
    ).fetchall()
    missing = sorted(set(values) - {r[0] for r in known})
    if missing:
        raise RecoveryError(
            f"no captured change has {what} {missing[0]!r}: check the spelling "
            f"(`recovery changes` lists the {what}s of captured changes)"
        )


def where_clause(
    conn: psycopg.Connection, sel: Selector, schema: str = DEFAULT_SCHEMA, alias: str = "st"
) -> sql.Composable:
    """SQL condition over the statement journal (alias `st`) that the selector means."""
    a = sql.Identifier(alias)
    conds: list[sql.Composable] = [sql.SQL("true")]
    # One rule for "nothing found" (README, Selectors): a tag, user or application that
    # no captured change has is bad input (a typo, most likely), exit 1; a selector whose
    # names all exist but whose combination matches nothing is an empty answer, exit 0;
    # a time window that ends before it starts is bad input.
    _require_known(conn, schema, "tag", "tag", sel.tags)
    _require_known(conn, schema, "db_user", "user", sel.users)
    _require_known(conn, schema, "app", "application", sel.apps)
    if sel.tags:
        conds.append(sql.SQL("{}.tag = ANY({})").format(a, sql.Literal(list(sel.tags))))
    if sel.exclude_tags:
        conds.append(
            sql.SQL("({}.tag IS NULL OR {}.tag <> ALL({}))").format(
                a, a, sql.Literal(list(sel.exclude_tags))
            )
        )
    if sel.txids:
        conds.append(
            sql.SQL("{}.txid = ANY({})").format(a, sql.Literal([int(x) for x in sel.txids]))
        )
    if sel.since:
        since = resolve_time(conn, sel.since, "since", schema)
        conds.append(sql.SQL("{}.at >= {}").format(a, sql.Literal(since)))
    if sel.until:
        until = resolve_time(conn, sel.until, "until", schema)
        conds.append(sql.SQL("{}.at < {}").format(a, sql.Literal(until)))
        if sel.since and not scalar(
            conn, "SELECT %s::timestamptz < %s::timestamptz", [since, until]
        ):
            raise RecoveryError(
                f"--since {sel.since} is not before --until {sel.until}: the window is empty; "
                "swap them"
            )
    if sel.users:
        conds.append(sql.SQL("{}.db_user = ANY({})").format(a, sql.Literal(list(sel.users))))
    if sel.apps:
        conds.append(sql.SQL("{}.app = ANY({})").format(a, sql.Literal(list(sel.apps))))
    base = sql.SQL(" AND ").join(conds)
    if not sel.tables:
        return base
    ids = table_ids(conn, sel.tables, schema)
    direct = sql.SQL("{}.table_id = ANY({})").format(a, sql.Literal(ids))
    if not sel.follow_cascades:
        return sql.SQL("({}) AND {}").format(base, direct)
    # Cascaded changes: made by a trigger (depth > 1), in a transaction that has a
    # selected change, on a captured table that references a selected one.
    cascade = sql.SQL(
        "({a}.depth > 1 AND {a}.table_id IN ("
        " WITH RECURSIVE r(relid) AS ("
        "  SELECT relid FROM {s}.captured WHERE table_id = ANY({ids})"
        "  UNION SELECT con.conrelid FROM pg_constraint con JOIN r ON con.confrelid = r.relid"
        "  WHERE con.contype = 'f' AND (con.confdeltype IN ('c', 'n', 'd')"
        "        OR con.confupdtype IN ('c', 'n', 'd')))"
        " SELECT c.table_id FROM {s}.captured c JOIN r ON r.relid = c.relid)"
        " AND {a}.txid IN (SELECT x.txid FROM {s}.stmt x WHERE x.table_id = ANY({ids})"
        "  AND {xbase}))"
    ).format(
        a=a,
        s=sql.Identifier(schema),
        ids=sql.Literal(ids),
        xbase=where_clause(
            conn,
            Selector(
                tags=sel.tags,
                txids=sel.txids,
                since=sel.since,
                until=sel.until,
                users=sel.users,
                apps=sel.apps,
                exclude_tags=sel.exclude_tags,
            ),
            schema,
            "x",
        ),
    )
    return sql.SQL("({}) AND ({} OR {})").format(base, direct, cascade)
