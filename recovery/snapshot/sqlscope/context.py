"""The state of one analysis: catalog reads (cached) and what earlier statements of the
file did (tables written, statements PREPAREd, a search_path SET)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from .model import Rel
from .nodes import ident

_REL = (
    "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
)


class Context:
    """One analysis of a file: its connection, the catalog as read so far, and what the
    statements analysed so far write, PREPARE and SET."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.written: dict[int, int] = {}  # relid -> first statement of the file writing it
        self.prepared: dict[str, Any] = {}  # PREPAREd in the file: name -> query
        self.path: list[str] | None = None  # a search_path the file SETs
        self._rels: dict[str, Rel | None] = {}
        self._cols: dict[int, list[tuple[str, str]]] = {}
        # (schema, name) of a call -> its pg_proc rows (scan.scan_function)
        self.funcs: dict[tuple[str | None, str], list[tuple[Any, ...]]] = {}

    def q(self, query: str | sql.SQL | sql.Composed, params: Any = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, params).fetchall()

    def rels(self, query: str, params: Any) -> list[Rel]:
        return [Rel(*r) for r in self.q(_REL + query, params)]

    def resolve(self, parts: list[str]) -> Rel | None:
        """The relation a (possibly qualified) name means (search_path of the file, if SET)."""
        if len(parts) == 1 and self.path is not None:
            return next(
                filter(None, (self.resolve_text(ident(s, parts[0])) for s in self.path)), None
            )
        return self.resolve_text(ident(*parts))

    def resolve_text(self, name: str) -> Rel | None:
        if name not in self._rels:
            try:  # to_regclass() rejects some syntax before PG 16 (string literals)
                with self.conn.transaction():
                    rows = self.rels("WHERE c.oid = to_regclass(%s)", [name])
            except psycopg.Error:
                rows = []
            self._rels[name] = rows[0] if rows else None
        return self._rels[name]

    def columns(self, relid: int) -> list[tuple[str, str]]:
        """(name, type) of a table's live columns in attnum order."""
        if relid not in self._cols:
            self._cols[relid] = [
                (n, t)
                for n, t in self.q(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                    "attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    [relid],
                )
            ]
        return self._cols[relid]

    def base_tables(self, view: int) -> list[Rel]:
        """Tables a view reads, through views on views (pg_depend of its rewrite rules)."""
        return self.rels(
            "WHERE c.relkind IN ('r', 'p') AND c.oid IN (WITH RECURSIVE v(oid) AS (SELECT "
            "%s::oid UNION SELECT d.refobjid FROM v JOIN pg_rewrite w ON w.ev_class = v.oid "
            "JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid AND "
            "d.refclassid = 'pg_class'::regclass AND d.refobjid <> v.oid) SELECT oid FROM v) "
            "ORDER BY 2, 3",
            [view],
        )

    def fk_closure(self, relids: list[int]) -> list[Rel]:
        """Tables referencing relids by foreign key, recursively (what TRUNCATE CASCADE
        empties). A constraint cloned onto partitions is followed once, from its origin."""
        return self.rels(
            "WHERE c.relkind IN ('r', 'p') AND c.oid <> ALL(%s::oid[]) AND c.oid IN (WITH "
            "RECURSIVE r(oid) AS (SELECT unnest(%s::oid[]) UNION SELECT k.conrelid FROM r JOIN "
            "pg_constraint k ON k.confrelid = r.oid AND k.contype = 'f' AND NOT EXISTS (SELECT "
            "FROM pg_constraint p WHERE p.oid = k.conparentid AND p.confrelid = k.confrelid)) "
            "SELECT oid FROM r) ORDER BY 2, 3",
            [relids, relids],
        )

    def inherit_children(self, relids: list[int]) -> list[Rel]:
        """Plain inheritance children (not partitions): DROP ... CASCADE drops them too."""
        return self.rels(
            "WHERE NOT c.relispartition AND c.oid IN (WITH RECURSIVE r(oid) AS (SELECT "
            "unnest(%s::oid[]) UNION SELECT i.inhrelid FROM r JOIN pg_inherits i ON "
            "i.inhparent = r.oid) SELECT oid FROM r) AND c.oid <> ALL(%s::oid[]) ORDER BY 2, 3",
            [relids, relids],
        )
