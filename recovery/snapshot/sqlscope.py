"""What a migration file could destroy: the scope of `recovery snapshot create --for-sql FILE`.

The file is parsed with PostgreSQL's own parser (pglast) and every statement is mapped to
*targets*: rows (a WHERE over the table as the statement named it) or columns of existing
tables that running it could overwrite or remove. The snapshot engine saves them first.

Decisions:

* Supersets are fine, subsets are not. Conditions that only narrow further are ignored
  (MERGE's `WHEN MATCHED AND cond`, ON CONFLICT's `DO UPDATE ... WHERE`, partial unique
  indexes), and an UPDATE puts whole rows at risk (its triggers may change any column).
* Every WHERE is evaluated before the file runs. A WHERE reading a table that an earlier
  statement of the file writes (other than its own target) is widened to the whole table
  (bounded=False); so is one that does not plan before the file runs (e.g. it names a
  column an earlier ALTER TABLE adds). bounded=False always comes with where=None.
* What cannot be bounded (DO, CALL, volatile user functions, EXECUTE, unknown statements)
  falls back to the whole of every existing table its code names in a destructive statement
  or in a string literal (dynamic SQL). Trigger bodies are not followed.
* Foreign-key actions (ON DELETE / ON UPDATE CASCADE, SET NULL, SET DEFAULT) are followed
  from every row target, recursively; TRUNCATE ... CASCADE empties referencing tables.
* Names are resolved with the connection's search_path; after a `SET search_path` in the
  file, with that one, and the statement's tables are then written schema-qualified.
  Function names and names in function bodies always use the connection's search_path.
* Only catalog reads and EXPLAINs (in savepoints) are sent; nothing is written.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pglast
import psycopg
from pglast import ast
from pglast.enums import (
    AlterTableType,
    CmdType,
    DropBehavior,
    MergeMatchKind,
    ObjectType,
    OnConflictAction,
    VariableSetKind,
)
from pglast.parser import ParseError
from pglast.stream import RawStream, maybe_double_quote_name
from psycopg import sql

from ..errors import RecoveryError, first_line


@dataclass
class Target:
    """Rows (where; None = every row) or columns of a table that a statement could destroy."""

    relid: int  # pg_class oid of the table (relkind 'r' or 'p')
    schema: str
    table: str
    from_sql: str | None  # the table as the statement named it; None iff where is None
    where: str | None  # rows: SELECT tableoid, ctid FROM {from_sql} WHERE {where}
    columns: tuple[str, ...] | None  # None = whole rows; else only these columns are at risk
    bounded: bool  # False: fell back to the whole table (where is then None)
    reason: str
    est_rows: int | None = None  # filled by estimate() (an addition to the brief's fields)
    est_bytes: int | None = None


@dataclass
class Statement:
    """One statement of the file (number and line 1-based) and what it could destroy."""

    number: int
    line: int
    text: str
    kind: str
    targets: list[Target]
    notes: list[str]
    est_rows: int | None = None
    est_bytes: int | None = None


class _Rel(NamedTuple):
    relid: int
    schema: str
    table: str
    relkind: str

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class _Row:
    """A row target being built, with what widening and FK cascades need."""

    target: Target
    reads: set[int]  # tables its WHERE reads
    ops: frozenset[str] = frozenset()  # 'delete' / 'update': the FK actions it fires
    setcols: set[str] | None = None  # columns an update assigns (None: any)


@dataclass
class _Scan:
    """What code the analysis cannot bound (DO, function bodies...) may destroy."""

    found: dict[int, _Rel] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)  # functions already read
    gaps: list[str] = field(default_factory=list)  # why `found` may be incomplete
    called: list[str] = field(default_factory=list)  # volatile user functions called


_SAFE_SCHEMAS = ("pg_catalog", "information_schema")
_DML = (ast.UpdateStmt, ast.DeleteStmt, ast.InsertStmt, ast.MergeStmt)
_COLUMN_CMDS = (AlterTableType.AT_DropColumn, AlterTableType.AT_AlterColumnType)
_FK_ACTION = {"c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
_IDENT = r'(?:"[^"]+"|[A-Za-z_][\w$]*)(?:\.(?:"[^"]+"|[A-Za-z_][\w$]*))?'
_NAME_RE = re.compile(rf"^\s*({_IDENT})\s*$")
_SQL_RE = re.compile(
    r"^\s*(UPDATE|DELETE|INSERT|MERGE|TRUNCATE|DROP|ALTER|WITH|DO|CALL|SELECT)\b", re.IGNORECASE
)
# When a PL/pgSQL body does not parse: the name after a destructive keyword.
_BODY_RE = re.compile(
    r"\b(?:UPDATE|DELETE\s+FROM|INSERT\s+INTO|MERGE\s+INTO|TRUNCATE(?:\s+TABLE)?"
    r"|(?:DROP|ALTER)\s+TABLE(?:\s+IF\s+EXISTS)?)(?:\s+ONLY)?\s+(" + _IDENT + ")",
    re.IGNORECASE,
)
_REL = (
    "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
)
# Statements that never destroy an existing row (the user functions they call are checked).
_HARMLESS = frozenset(
    """
SelectStmt CreateStmt CreateTableAsStmt IndexStmt ViewStmt GrantStmt GrantRoleStmt
VariableSetStmt VariableShowStmt TransactionStmt VacuumStmt CommentStmt CreateSeqStmt
AlterSeqStmt CreateFunctionStmt AlterFunctionStmt CreateTrigStmt CreateEnumStmt AlterEnumStmt
CompositeTypeStmt CreateDomainStmt AlterDomainStmt CreateSchemaStmt CreateExtensionStmt
RenameStmt LockStmt NotifyStmt ListenStmt UnlistenStmt PrepareStmt DeallocateStmt
DeclareCursorStmt FetchStmt ClosePortalStmt CheckPointStmt DiscardStmt ClusterStmt ReindexStmt
RefreshMatViewStmt AlterOwnerStmt AlterObjectSchemaStmt CreatePolicyStmt AlterPolicyStmt
AlterDefaultPrivilegesStmt CreateRoleStmt AlterRoleStmt AlterRoleSetStmt DefineStmt
CreateCastStmt CreateStatsStmt RuleStmt CreateEventTrigStmt ConstraintsSetStmt
CreateForeignTableStmt ExplainStmt SecLabelStmt CreatePublicationStmt AlterPublicationStmt
ReassignOwnedStmt""".split()
)
# Statements whose function calls do not run when they run (definitions).
_NO_CALLS = frozenset(
    """CreateFunctionStmt ViewStmt RuleStmt PrepareStmt CreateTrigStmt
CreatePolicyStmt CreateStmt DeclareCursorStmt CreateDomainStmt IndexStmt ExplainStmt""".split()
)
# Kinds not read off the statement's first words (which may be WITH ...).
_KINDS = {
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "InsertStmt": "INSERT",
    "MergeStmt": "MERGE",
    "SelectStmt": "SELECT",
}


def _sql(node: Any) -> str:
    return RawStream()(node)


def _ident(*names: str) -> str:
    """Dot-joined names, double-quoted where PostgreSQL needs it (pglast's rules)."""
    return ".".join(maybe_double_quote_name(n) for n in names)


def _walk(node: Any) -> Iterator[Any]:
    """Every pglast node under node, node included, depth first."""
    if isinstance(node, ast.Node):
        yield node
        for attr in node:
            yield from _walk(getattr(node, attr))
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _walk(item)


def _json_dicts(obj: Any) -> Iterator[dict[str, Any]]:
    if isinstance(obj, dict):
        yield obj
    for v in obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ():
        yield from _json_dicts(v)


def _kind(node: Any, text: str) -> str:
    if isinstance(node, ast.InsertStmt) and node.onConflictClause is not None:
        upd = node.onConflictClause.action == OnConflictAction.ONCONFLICT_UPDATE
        return "INSERT ... ON CONFLICT DO " + ("UPDATE" if upd else "NOTHING")
    if isinstance(node, (ast.DropStmt, ast.AlterTableStmt)):
        drop = isinstance(node, ast.DropStmt)
        objtype = node.removeType if isinstance(node, ast.DropStmt) else node.objtype
        assert objtype is not None  # the parser always sets the object type
        obj = ObjectType(objtype)
        return ("DROP " if drop else "ALTER ") + obj.name[7:].replace("_", " ")
    if type(node).__name__ in _KINDS:
        return _KINDS[type(node).__name__]
    skip = {"OR", "REPLACE", "UNIQUE", "TEMP", "TEMPORARY", "UNLOGGED", "GLOBAL", "LOCAL"}
    words: list[str] = [w.upper() for w in re.findall(r"[A-Za-z]+", text)[:6]] or [
        type(node).__name__
    ]
    if words[0] in ("CREATE", "ALTER", "DROP"):
        return " ".join([words[0], *[w for w in words[1:] if w not in skip][:1]])
    return words[0]


def _exists(prefix: str, froms: list[str], cond: str | None) -> str:
    q = prefix + "SELECT 1" + (" FROM " + ", ".join(froms) if froms else "")
    return f"EXISTS ({q}{' WHERE ' + cond if cond else ''})"


def _parts(rv: ast.RangeVar) -> list[str]:
    return [p for p in (rv.schemaname, rv.relname) if p]


def _out_columns(sel: Any) -> int | None:
    """How many columns a SELECT / VALUES yields, when the parse tree tells."""
    if not isinstance(sel, ast.SelectStmt):
        return None
    if sel.valuesLists:
        return len(sel.valuesLists[0])
    if sel.larg is not None:
        return _out_columns(sel.larg)
    stars = any(isinstance(n, ast.A_Star) for n in _walk(sel.targetList))
    return None if stars or not sel.targetList else len(sel.targetList)


def analyze(conn: psycopg.Connection, text: str, *, source: str = "FILE") -> list[Statement]:
    """Per statement of a migration file, the rows and columns of existing tables it could
    destroy (see the module docstring). Reads the catalog only, in a transaction of its own
    or a savepoint of the caller's, rolled back (a caller's transaction is left open).
    Raises RecoveryError for a file that does not parse, has no statement, or destroys
    nothing in any existing table."""
    try:
        raws = pglast.parse_sql(text)
        starts = [
            t.start for t in pglast.parser.scan(text) if t.name not in ("C_COMMENT", "SQL_COMMENT")
        ]
    except ParseError as exc:
        msg, loc = (exc.args + (None, None))[:2]
        line = text.count("\n", 0, len(text) if loc is None else loc) + 1
        raise RecoveryError(
            f"{source}: line {line}: {msg}: fix the SQL (it must be valid PostgreSQL) and try again"
        ) from None
    if not raws:
        raise RecoveryError(
            f"{source}: no SQL statement in the file: pass the migration's SQL file to --for-sql"
        )
    with conn.transaction() as tx:
        a, stmts = _Analyzer(conn), []
        for number, raw in enumerate(raws, 1):
            loc = raw.stmt_location
            assert loc is not None  # the parser always sets it (0 for the first statement)
            end = loc + raw.stmt_len if raw.stmt_len else len(text)
            i = bisect.bisect_left(starts, loc)  # first token, past comments
            start = starts[i] if i < len(starts) else loc
            body = text[start:end].strip()
            st = Statement(
                number, text.count("\n", 0, start) + 1, body, _kind(raw.stmt, body), [], []
            )
            a.statement(st, raw.stmt)
            stmts.append(st)
        raise psycopg.Rollback(tx)
    if not any(st.targets for st in stmts):
        blind = [st for st in stmts if any(n.startswith("cannot bound") for n in st.notes)]
        if blind:
            raise RecoveryError(
                f"{source}: line {blind[0].line}: the {blind[0].kind} statement cannot be "
                "bounded and names no existing table: save the tables it touches with --table"
            )
        raise RecoveryError(
            f"no statement in {source} writes or drops an existing table: "
            "nothing to save (name tables with --table to save them anyway)"
        )
    return stmts


class _Analyzer:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.written: dict[int, int] = {}  # relid -> first statement of the file writing it
        self.prepared: dict[str, Any] = {}  # PREPAREd in the file: name -> query
        self.path: list[str] | None = None  # a search_path the file SETs
        self._rels: dict[str, _Rel | None] = {}
        self._cols: dict[int, list[tuple[str, str]]] = {}
        self._funcs: dict[tuple[str | None, str], list[tuple[Any, ...]]] = {}

    # -- catalog ---------------------------------------------------------------------

    def q(self, query: str | sql.SQL | sql.Composed, params: Any = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, params).fetchall()

    def rels(self, query: str, params: Any) -> list[_Rel]:
        return [_Rel(*r) for r in self.q(_REL + query, params)]

    def resolve(self, parts: list[str]) -> _Rel | None:
        """The relation a (possibly qualified) name means (search_path of the file, if SET)."""
        if len(parts) == 1 and self.path is not None:
            return next(
                filter(None, (self.resolve_text(_ident(s, parts[0])) for s in self.path)), None
            )
        return self.resolve_text(_ident(*parts))

    def resolve_text(self, name: str) -> _Rel | None:
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

    def base_tables(self, view: int) -> list[_Rel]:
        """Tables a view reads, through views on views (pg_depend of its rewrite rules)."""
        return self.rels(
            "WHERE c.relkind IN ('r', 'p') AND c.oid IN (WITH RECURSIVE v(oid) AS (SELECT "
            "%s::oid UNION SELECT d.refobjid FROM v JOIN pg_rewrite w ON w.ev_class = v.oid "
            "JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid AND "
            "d.refclassid = 'pg_class'::regclass AND d.refobjid <> v.oid) SELECT oid FROM v) "
            "ORDER BY 2, 3",
            [view],
        )

    def fk_closure(self, relids: list[int]) -> list[_Rel]:
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

    def inherit_children(self, relids: list[int]) -> list[_Rel]:
        """Plain inheritance children (not partitions): DROP ... CASCADE drops them too."""
        return self.rels(
            "WHERE NOT c.relispartition AND c.oid IN (WITH RECURSIVE r(oid) AS (SELECT "
            "unnest(%s::oid[]) UNION SELECT i.inhrelid FROM r JOIN pg_inherits i ON "
            "i.inhparent = r.oid) SELECT oid FROM r) AND c.oid <> ALL(%s::oid[]) ORDER BY 2, 3",
            [relids, relids],
        )

    # -- one statement -------------------------------------------------------------------

    def statement(self, st: Statement, node: Any) -> None:
        if self.path is not None:  # write the tables as the file's search_path finds them
            ctes = {n.ctename for n in _walk(node) if isinstance(n, ast.CommonTableExpr)}
            for rv in _walk(node):
                if isinstance(rv, ast.RangeVar) and not rv.schemaname and rv.relname not in ctes:
                    assert rv.relname is not None  # the parser always names the relation
                    rel = self.resolve([rv.relname])
                    rv.schemaname = rel.schema if rel else None
        if isinstance(node, ast.ExplainStmt) and any(  # EXPLAIN ANALYZE runs its statement
            o.defname == "analyze"
            and str(getattr(o.arg, "sval", getattr(o.arg, "ival", 1))).lower()
            not in ("false", "off", "0", "no")
            for o in node.options or ()
        ):
            st.kind, node = "EXPLAIN ANALYZE " + _kind(node.query, ""), node.query
        name, rows = type(node).__name__, []
        if isinstance(node, _DML) or getattr(node, "withClause", None) is not None:
            rows = self.dml(st, node, set())
            oc = getattr(node, "onConflictClause", None)
            if (
                isinstance(node, ast.InsertStmt)
                and not rows
                and (oc is None or oc.action != OnConflictAction.ONCONFLICT_UPDATE)
            ):
                st.notes.append("destroys no existing row (INSERT only adds rows)")
        elif isinstance(node, ast.TruncateStmt):
            self.truncate(st, node)
        elif isinstance(node, ast.DropStmt):
            self.drop(st, node)
        elif isinstance(node, ast.AlterTableStmt):
            self.alter(st, node)
        elif isinstance(node, (ast.DoStmt, ast.ExecuteStmt)) or (
            name not in _HARMLESS and name not in ("CallStmt", "CopyStmt")
        ):
            scan = self.collect(node, _Scan())
            if isinstance(node, ast.ExecuteStmt) and node.name not in self.prepared:
                scan.gaps.append(f"{node.name} was not PREPAREd in this file")
            elif not isinstance(node, (ast.DoStmt, ast.ExecuteStmt)):
                scan.gaps.append("not a statement this analysis knows")
            rows = self.fallback(st, scan, "DO block" if name == "DoStmt" else st.kind)
        elif isinstance(node, ast.CopyStmt) and node.is_from:
            st.notes.append("COPY FROM only adds rows: destroys no existing row")
            rel = self.resolve(_parts(node.relation)) if node.relation else None
            if rel:
                self.written.setdefault(rel.relid, st.number)
        if isinstance(node, ast.PrepareStmt):
            assert node.name is not None  # PREPARE always names its statement
            self.prepared[node.name] = node.query
        if isinstance(node, ast.VariableSetStmt) and node.name in ("search_path", None):
            self.set_path(st, node)
        if name not in _NO_CALLS:  # volatile user functions the statement runs
            scan = self.collect(node, _Scan(), calls_only=True)
            if scan.called or name == "CallStmt":
                scan.gaps += [] if scan.called else ["no such procedure (yet)"]
                rows += self.fallback(st, scan, "calls " + (", ".join(scan.called) or "it"))
        self.finish(st, rows)
        if not st.targets and not st.notes:
            st.notes.append("destroys no existing row")
        for t in st.targets:
            self.written.setdefault(t.relid, st.number)

    def set_path(self, st: Statement, node: ast.VariableSetStmt) -> None:
        if node.kind != VariableSetKind.VAR_SET_VALUE:  # DEFAULT, RESET: the session's again
            self.path = None
            return
        user = self.q("SELECT current_user")[0][0]
        assert node.args is not None  # SET ... TO <value> always has a value
        names = [
            user if a.val.sval == "$user" else a.val.sval
            for a in node.args
            if isinstance(a.val, ast.String) and a.val.sval
        ]
        self.path = ([] if "pg_catalog" in names else ["pg_catalog"]) + names
        st.notes.append(
            "later statements' tables are resolved with this search_path and "
            "saved schema-qualified (functions: with the session's)"
        )

    def finish(self, st: Statement, rows: list[_Row]) -> None:
        """Widen, check and cascade row targets; add them to the statement, once each."""
        out = [self.settle(st, r) for r in rows]
        for r in rows:
            out += self.cascade(st, r, {r.target.relid}, set())
        keys = {(t.relid, t.from_sql, t.where, t.columns) for t in st.targets}
        for t in out:
            if (t.relid, t.from_sql, t.where, t.columns) not in keys:
                keys.add((t.relid, t.from_sql, t.where, t.columns))
                st.targets.append(t)

    def settle(self, st: Statement, r: _Row) -> Target:
        """Widen a row target whose WHERE cannot be trusted before the file runs."""
        t, why = r.target, None
        if t.where is None:
            return t
        # A table the WHERE reads (a join, a subquery; its own table too, through a
        # subquery) that an earlier statement writes: evaluated before the file runs,
        # the WHERE may select other rows than it will then.  (Columns of the target
        # row itself are no read: rows an earlier statement changed are saved by it.)
        hit = sorted(x for x in r.reads if x in self.written)
        if hit:
            other = self.rels("WHERE c.oid = %s", [hit[0]])[0].name
            why = f"reads {other}, which statement {self.written[hit[0]]} writes"
        else:
            try:
                with self.conn.transaction():
                    self.q(
                        sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE {}").format(
                            sql.SQL(t.from_sql or ""), sql.SQL(t.where)
                        )
                    )
            except psycopg.Error as exc:
                why = f"its WHERE does not run before the file ({first_line(exc)})"
        if why:
            st.notes.append(f"{t.schema}.{t.table}: {why}: widened to the whole table")
            t.where = t.from_sql = None
            t.bounded = False
        return t

    def cascade(self, st: Statement, parent: _Row, path: set[int], whole: set[int]) -> list[Target]:
        """Rows that foreign-key actions change when parent's rows are deleted or updated:
        `(fkcols) IN (SELECT refcols FROM parent WHERE ...)`, recursively. A table met again
        on the path (a cycle, a self-reference included) is saved whole, unbounded, once."""
        p = parent.target
        if not parent.ops or p.columns is not None or len(path) > 16:
            return []
        out: list[Target] = []
        for relid, schema, table, deltype, updtype, fkcols, refcols in self.q(
            "SELECT k.conrelid, n.nspname, c.relname, k.confdeltype, k.confupdtype, ARRAY("
            "SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, i) JOIN "
            "pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i), "
            "ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(n, i) "
            "JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY "
            "u.i) FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN "
            "pg_namespace n ON n.oid = c.relnamespace WHERE k.contype = 'f' AND k.confrelid "
            "= %s AND NOT EXISTS (SELECT FROM pg_constraint x WHERE x.oid = k.conparentid "
            "AND x.confrelid = k.confrelid) ORDER BY 2, 3, k.conname",
            [p.relid],
        ):
            acts = [("DELETE", deltype)] if "delete" in parent.ops and deltype in _FK_ACTION else []
            if (
                "update" in parent.ops
                and updtype in _FK_ACTION
                and (parent.setcols is None or parent.setcols & set(refcols))
            ):
                acts.append(("UPDATE", updtype))
            if not acts or relid in whole:
                continue
            reason = f"ON {acts[0][0]} {_FK_ACTION[acts[0][1]]} from {p.schema}.{p.table}"
            src = p.from_sql or _ident(p.schema, p.table)
            where = (
                f"({', '.join(map(_ident, fkcols))}) IN (SELECT "
                f"{', '.join(map(_ident, refcols))} FROM {src}"
                + (f" WHERE {p.where})" if p.where else ")")
            )
            child = Target(relid, schema, table, _ident(schema, table), where, None, True, reason)
            if relid in path:  # a cycle: how deep it goes is unknown
                child.where = child.from_sql = None
                child.bounded, child.reason = False, reason + " (a cycle): whole table"
                whole.add(relid)
            ops = frozenset("delete" if a == ("DELETE", "c") else "update" for a in acts)
            row = _Row(child, parent.reads | {p.relid}, ops, set(fkcols))
            out.append(self.settle(st, row))
            out += self.cascade(st, row, path | {relid}, whole)
        return out

    # -- row statements --------------------------------------------------------------------

    def with_prefix(self, wc: Any, parts: Any, outer: set[str]) -> tuple[str, bool]:
        """`WITH ...` of the read-only CTEs, to evaluate the WHERE standalone; False when the
        WHERE reads a data-modifying CTE or (for a modifying CTE) a sibling CTE."""
        ctes = list(wc.ctes) if wc else []
        kept = [c for c in ctes if isinstance(c.ctequery, ast.SelectStmt)]
        names = {c.ctename for c in ctes}
        banned = (names - {c.ctename for c in kept}) | (outer - names)
        refs = {
            n.relname
            for n in _walk((parts, kept))
            if isinstance(n, ast.RangeVar) and not n.schemaname
        }
        prefix = (
            ("WITH RECURSIVE " if wc.recursive else "WITH ")
            + _sql(ast.WithClause(ctes=tuple(kept), recursive=False))
            + " "
            if kept
            else ""
        )
        return prefix, not (refs & banned)

    def reads(self, parts: Any) -> set[int]:
        """Tables (and the tables of views) that parse trees read, CTE names aside."""
        ctes = {n.ctename for n in _walk(parts) if isinstance(n, ast.CommonTableExpr)}
        out: set[int] = set()
        for n in _walk(parts):
            if isinstance(n, ast.RangeVar) and (n.schemaname or n.relname not in ctes):
                rel = self.resolve(_parts(n))
                if rel:
                    out |= {rel.relid} | (
                        {b.relid for b in self.base_tables(rel.relid)}
                        if rel.relkind == "v"
                        else set()
                    )
        return out

    def dml(self, st: Statement, node: Any, outer: set[str]) -> list[_Row]:
        """Row targets of an UPDATE / DELETE / INSERT ON CONFLICT / MERGE, and of the
        data-modifying CTEs of any statement (recursively)."""
        rows: list[_Row] = []
        wc = getattr(node, "withClause", None)
        names = {c.ctename for c in wc.ctes} if wc else set()
        for cte in wc.ctes if wc else ():
            if isinstance(cte.ctequery, _DML):
                rows += self.dml(st, cte.ctequery, outer | names)
        setcols: set[str] | None = None
        where: str | None = None
        if isinstance(node, (ast.UpdateStmt, ast.DeleteStmt)):
            verb = "UPDATE" if isinstance(node, ast.UpdateStmt) else "DELETE"
            extra = list(
                (node.fromClause if isinstance(node, ast.UpdateStmt) else node.usingClause) or ()
            )
            parts: Any = (node.whereClause, extra)
            ops = frozenset({verb.lower()})
            if isinstance(node, ast.UpdateStmt):
                assert node.targetList is not None  # UPDATE always has a SET list
                setcols = {rt.name for rt in node.targetList}
            prefix, ok = self.with_prefix(wc, parts, outer)
            if isinstance(node.whereClause, ast.CurrentOfExpr):
                reason, ok = "WHERE CURRENT OF: cannot bound, whole table", False
            elif not ok:
                reason = f"the {verb} reads another CTE of its statement: cannot bound, whole table"
            elif node.whereClause is None and not extra:
                reason = f"{verb} without WHERE: whole table"
            else:
                cond = _sql(node.whereClause) if node.whereClause is not None else None
                where = _exists(prefix, list(map(_sql, extra)), cond) if extra or prefix else cond
                reason = f"rows the {verb}'s WHERE selects"
        elif isinstance(node, ast.InsertStmt):
            oc = node.onConflictClause
            if oc is None or oc.action != OnConflictAction.ONCONFLICT_UPDATE:
                assert node.relation is not None  # INSERT always names its table
                rel = self.resolve(_parts(node.relation))
                if rel:
                    self.written.setdefault(rel.relid, st.number)
                return rows
            parts, ops = node.selectStmt, frozenset({"update"})
            setcols = {rt.name for rt in oc.targetList or ()}
            where, reason = self.upsert(node, outer)
            ok = where is not None
        elif isinstance(node, ast.MergeStmt):
            assert node.mergeWhenClauses is not None  # MERGE always has a WHEN clause
            acts = [
                w
                for w in node.mergeWhenClauses
                if w.commandType in (CmdType.CMD_UPDATE, CmdType.CMD_DELETE)
            ]
            if not acts:
                st.notes.append("MERGE only inserts (WHEN NOT MATCHED): destroys no existing row")
                return rows
            ops = frozenset(
                "delete" if w.commandType == CmdType.CMD_DELETE else "update" for w in acts
            )
            setcols = {rt.name for w in acts for rt in w.targetList or ()}
            parts = (node.sourceRelation, node.joinCondition)
            prefix, ok = self.with_prefix(wc, parts, outer)
            kinds = {w.matchKind for w in acts}
            exists = _exists(prefix, [_sql(node.sourceRelation)], _sql(node.joinCondition))
            if not ok:
                reason = "the MERGE reads a data-modifying CTE: cannot bound, whole table"
            elif MergeMatchKind.MERGE_WHEN_NOT_MATCHED_BY_SOURCE not in kinds:
                where, reason = exists, "rows the MERGE's join condition matches"
            elif MergeMatchKind.MERGE_WHEN_MATCHED not in kinds:
                where, reason = "NOT " + exists, "rows the MERGE's source does not match"
            else:
                reason = "MERGE of matched and unmatched rows: whole table"
        else:
            return rows
        return rows + self.row_targets(
            st, node.relation, where, ok, reason, self.reads((parts, wc)), ops, setcols
        )

    def upsert(self, node: ast.InsertStmt, outer: set[str]) -> tuple[str | None, str]:
        """INSERT ... ON CONFLICT DO UPDATE: the existing rows whose conflict key equals an
        inserted row's: `(t.k) IN (SELECT CAST(_ins.k AS type) FROM (<rows>) _ins(<cols>))`.
        (None, reason) when the key cannot be mapped to inserted values."""
        oc, rv, sel = node.onConflictClause, node.relation, node.selectStmt
        assert oc is not None and rv is not None  # called for ON CONFLICT DO UPDATE only
        rel, no = self.resolve(_parts(rv)), "cannot bound, whole table"
        if rel is None or rel.relkind not in ("r", "p"):
            return None, no
        cols = dict(self.columns(rel.relid))
        if oc.infer is not None and oc.infer.conname:
            keys = [
                r[0]
                for r in self.q(
                    "SELECT a.attname FROM pg_constraint k, unnest(k.conkey) WITH ORDINALITY "
                    "u(n, i), pg_attribute a WHERE k.conrelid = %s AND k.conname = %s AND "
                    "a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i",
                    [rel.relid, oc.infer.conname],
                )
            ]
        elif oc.infer is not None and all(e.name for e in oc.infer.indexElems or ()):
            assert oc.infer.indexElems is not None  # ON CONFLICT (...) lists one key at least
            keys = [e.name for e in oc.infer.indexElems]
        else:
            return None, f"ON CONFLICT with an expression key: {no}"
        if node.cols and any(rt.indirection for rt in node.cols):
            return None, f"INSERT into subfields: {no}"
        inscols = [rt.name for rt in node.cols] if node.cols else list(cols)
        inscols = inscols[: _out_columns(sel) or len(inscols)]
        if sel is None or not keys or any(k not in inscols for k in keys):
            return None, f"conflict key takes default values: {no}"
        if isinstance(sel, ast.SelectStmt) and sel.valuesLists:  # DEFAULT is not a value
            pos = {inscols.index(k) for k in keys}
            if any(
                isinstance(v, ast.SetToDefault) and i in pos
                for row in sel.valuesLists
                for i, v in enumerate(row)
            ):
                return None, f"conflict key takes default values: {no}"
            sel.valuesLists = tuple(
                tuple(
                    ast.A_Const(isnull=True) if isinstance(v, ast.SetToDefault) else v for v in row
                )
                for row in sel.valuesLists
            )
        prefix, ok = self.with_prefix(node.withClause, sel, outer)
        if not ok:
            return None, f"the INSERT reads a data-modifying CTE: {no}"
        refname = rv.alias.aliasname if rv.alias else rv.relname
        assert refname is not None  # the parser always names an alias and a relation
        ref = _ident(refname)
        lhs = ", ".join(f"{ref}.{_ident(k)}" for k in keys)
        rhs = ", ".join(f"CAST(_ins.{_ident(k)} AS {cols[k]})" for k in keys)
        return (
            f"({lhs}) IN ({prefix}SELECT {rhs} FROM ({_sql(sel)}) AS _ins("
            f"{', '.join(map(_ident, inscols))}))",
            f"rows whose conflict key ({', '.join(keys)}) an inserted row repeats",
        )

    def row_targets(
        self,
        st: Statement,
        rv: ast.RangeVar,
        where: str | None,
        ok: bool,
        reason: str,
        reads: set[int],
        ops: frozenset[str],
        setcols: set[str] | None,
    ) -> list[_Row]:
        """Targets for the relation a row statement names: itself, or a view's tables."""
        rel = self.resolve(_parts(rv))
        if rel is None or rel.relkind not in ("r", "p", "v"):
            self.whole(st, rel, _sql(rv), "")  # the note
            return []
        if rel.relkind == "v":
            bases = self.base_tables(rel.relid)
            st.notes.append(
                f"{rel.name} is a view: whole tables it reads ("
                + (", ".join(b.name for b in bases) or "none")
                + ")"
            )
            return [
                _Row(
                    Target(
                        b.relid,
                        b.schema,
                        b.table,
                        None,
                        None,
                        None,
                        False,
                        f"writes through view {rel.name}: cannot bound, whole table",
                    ),
                    set(),
                    ops,
                    setcols,
                )
                for b in bases
            ]
        t = Target(
            rel.relid,
            rel.schema,
            rel.table,
            _sql(rv) if where else None,
            where,
            None,
            ok or where is not None,
            reason,
        )
        return [_Row(t, reads, ops, setcols)]

    # -- DDL -------------------------------------------------------------------------------

    def whole(
        self,
        st: Statement,
        rel: _Rel | None,
        label: str,
        reason: str,
        columns: tuple[str, ...] | None = None,
    ) -> None:
        """A whole-table target, or a note for what is not a table."""
        if rel is None:
            st.notes.append(f"{label} does not exist (yet): nothing of it to save")
        elif rel.relkind == "f":
            st.notes.append(f"{rel.name} is a foreign table: its rows cannot be saved")
        elif rel.relkind not in ("r", "p"):
            st.notes.append(f"{rel.name} is not a table: nothing of it to save")
        else:
            st.targets.append(
                Target(rel.relid, rel.schema, rel.table, None, None, columns, True, reason)
            )

    def truncate(self, st: Statement, node: ast.TruncateStmt) -> None:
        assert node.relations is not None  # TRUNCATE always names a table
        rels = [(rv, self.resolve(_parts(rv))) for rv in node.relations]
        for rv, rel in rels:
            self.whole(st, rel, _sql(rv), "TRUNCATE: whole table")
        if node.behavior == DropBehavior.DROP_CASCADE:
            names = ", ".join(r.name for _, r in rels if r)
            for child in self.fk_closure([r.relid for _, r in rels if r]):
                self.whole(st, child, "", f"TRUNCATE CASCADE from {names}: whole table")

    def drop(self, st: Statement, node: ast.DropStmt) -> None:
        """DROP TABLE (with CASCADE: plain inheritance children too), DROP SCHEMA CASCADE,
        DROP TYPE / DOMAIN CASCADE (the columns of that type or its array type)."""
        assert node.removeType is not None and node.objects is not None  # parser sets both
        cascade, kind = node.behavior == DropBehavior.DROP_CASCADE, ObjectType(node.removeType)
        if kind == ObjectType.OBJECT_TABLE:
            rels = []
            for obj in node.objects:
                parts = [s.sval for s in obj][-2:]
                rel = self.resolve(parts)
                self.whole(st, rel, ".".join(parts), "DROP TABLE: whole table")
                rels += [rel] if rel else []
            for child in self.inherit_children([r.relid for r in rels]) if cascade else ():
                self.whole(st, child, "", "DROP TABLE CASCADE of its parent: whole table")
        elif kind == ObjectType.OBJECT_SCHEMA:
            for obj in node.objects:
                if not cascade:
                    st.notes.append(
                        f"DROP SCHEMA {obj.sval} without CASCADE fails unless it "
                        "is empty: nothing to save"
                    )
                    continue
                rels = self.rels(
                    "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 3", [obj.sval]
                )
                for rel in rels + self.inherit_children([r.relid for r in rels]):
                    self.whole(st, rel, "", f"DROP SCHEMA {obj.sval} CASCADE: whole table")
        elif kind == ObjectType.OBJECT_EXTENSION and cascade:
            st.notes.append(
                "cannot bound: DROP EXTENSION ... CASCADE drops the columns of its "
                "types; save those tables with --table"
            )
        elif kind in (ObjectType.OBJECT_TYPE, ObjectType.OBJECT_DOMAIN) and cascade:
            for obj in node.objects:
                for relid, cols in self.q(
                    "SELECT d.objid, array_agg(a.attname::text ORDER BY a.attnum) FROM "
                    "pg_type t JOIN pg_depend d ON d.refclassid = 'pg_type'::regclass AND "
                    "d.refobjid IN (t.oid, t.typarray) AND d.classid = 'pg_class'::regclass "
                    "AND d.objsubid > 0 JOIN pg_attribute a ON a.attrelid = d.objid AND "
                    "a.attnum = d.objsubid WHERE t.oid = to_regtype(%s) GROUP BY 1",
                    [_sql(obj)],
                ):
                    [rel] = self.rels("WHERE c.oid = %s", [relid])
                    if rel.relkind in ("r", "p"):
                        self.whole(
                            st,
                            rel,
                            "",
                            f"DROP {kind.name[7:]} {_sql(obj)} CASCADE drops these columns",
                            tuple(cols),
                        )

    def alter(self, st: Statement, node: ast.AlterTableStmt) -> None:
        """ALTER TABLE: the columns it drops or retypes (every row); any ALTER TABLE counts
        as writing the table for the widening of later statements."""
        assert node.cmds is not None and node.relation is not None  # parser sets both
        cmds = [c for c in node.cmds if c.subtype in _COLUMN_CMDS]
        if node.objtype == ObjectType.OBJECT_TYPE and cmds:
            st.notes.append(
                "cannot bound: ALTER TYPE on attributes changes every column of "
                "that type; save those tables with --table"
            )
        if node.objtype != ObjectType.OBJECT_TABLE:
            return
        rel = self.resolve(_parts(node.relation))
        if rel is not None:
            self.written.setdefault(rel.relid, st.number)
        if not cmds or rel is None or rel.relkind not in ("r", "p"):
            if cmds:
                self.whole(st, rel, _sql(node.relation), "")  # the note
            return
        have, cols, what = dict(self.columns(rel.relid)), [], []
        for c in cmds:
            if c.name in have:
                cols.append(c.name)
                what.append(
                    ("DROP COLUMN " if c.subtype == AlterTableType.AT_DropColumn else "ALTER TYPE ")
                    + c.name
                )
            else:
                st.notes.append(f"column {c.name} of {rel.name} does not exist (yet)")
        if cols:
            self.whole(
                st,
                rel,
                "",
                "; ".join(what) + ": these columns of every row",
                tuple(dict.fromkeys(cols)),
            )

    # -- what cannot be bounded ----------------------------------------------------------

    def fallback(self, st: Statement, scan: _Scan, what: str) -> list[_Row]:
        """Whole tables the unbounded code may destroy (bounded=False), or a note. Their
        rows may be deleted or updated: foreign-key actions are followed from them."""
        gaps = "; ".join(dict.fromkeys(scan.gaps))
        if scan.found:
            st.notes.append(
                f"{what}: cannot bound its writes: whole tables it names ("
                + ", ".join(r.name for r in scan.found.values())
                + ")"
                + (f"; may miss more: {gaps}" if gaps else "")
            )
        elif gaps:
            st.notes.append(
                "cannot bound: it may write any table; save the tables it touches "
                f"with --table ({what}: {gaps})"
            )
        else:
            st.notes.append(f"{what}: its code destroys no existing row")
        return [
            _Row(
                Target(
                    r.relid,
                    r.schema,
                    r.table,
                    None,
                    None,
                    None,
                    False,
                    f"{what}: cannot bound, whole table",
                ),
                set(),
                frozenset({"delete", "update"}),
            )
            for r in scan.found.values()
        ]

    def collect(self, node: Any, scan: _Scan, calls_only: bool = False) -> _Scan:
        """Tables that code (parse trees) may destroy: targets of destructive statements,
        string literals naming a table or holding SQL, bodies of the volatile user functions
        it calls. calls_only: only follow function calls."""
        for n in _walk(node):
            if isinstance(n, ast.FuncCall):
                assert n.funcname is not None  # a call always names its function
                self.scan_function([s.sval for s in n.funcname], scan)
            elif calls_only:
                continue
            elif (
                isinstance(n, (ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt))
                or (
                    isinstance(n, ast.InsertStmt)
                    and n.onConflictClause is not None
                    and n.onConflictClause.action == OnConflictAction.ONCONFLICT_UPDATE
                )
                or (
                    isinstance(n, ast.AlterTableStmt)
                    and any(c.subtype in _COLUMN_CMDS for c in n.cmds or ())
                )
            ):
                assert n.relation is not None  # the parser always names the table
                self.found(self.resolve(_parts(n.relation)), scan)
            elif isinstance(n, ast.TruncateStmt):
                assert n.relations is not None  # TRUNCATE always names a table
                rels = [r for r in (self.resolve(_parts(rv)) for rv in n.relations) if r]
                if n.behavior == DropBehavior.DROP_CASCADE:
                    rels += self.fk_closure([r.relid for r in rels])
                for r in rels:
                    self.found(r, scan)
            elif isinstance(n, ast.DropStmt) and n.removeType == ObjectType.OBJECT_TABLE:
                assert n.objects is not None  # DROP TABLE always names a table
                for obj in n.objects:
                    self.found(self.resolve([s.sval for s in obj][-2:]), scan)
            elif isinstance(n, ast.DropOwnedStmt) or (
                isinstance(n, ast.DropStmt) and n.behavior == DropBehavior.DROP_CASCADE
            ):
                scan.gaps.append(f"{_kind(n, 'DROP OWNED')} may drop tables or columns")
            elif isinstance(n, ast.DoStmt):
                self.scan_do(n, scan)
            elif isinstance(n, ast.ExecuteStmt) and n.name in self.prepared:
                self.collect(self.prepared[n.name], scan)
            elif isinstance(n, ast.A_Const) and isinstance(n.val, ast.String) and n.val.sval:
                self.literal(n.val.sval, scan)
        return scan

    def found(self, rel: _Rel | None, scan: _Scan) -> None:
        for r in (self.base_tables(rel.relid) if rel.relkind == "v" else [rel]) if rel else ():
            if r.relkind in ("r", "p"):
                scan.found.setdefault(r.relid, r)

    def literal(self, text: str, scan: _Scan) -> None:
        """A string literal in code: SQL to scan, or the name of a table (dynamic SQL)."""
        if _SQL_RE.match(text):
            try:
                self.collect(pglast.parse_sql(text), scan)
            except ParseError:
                pass
        elif _NAME_RE.match(text):
            self.found(self.resolve_text(text.strip()), scan)

    def scan_function(self, names: list[str], scan: _Scan) -> None:
        """Follow a call into the bodies of the volatile user functions it may mean: every
        overload of the name on the search_path (argument types are not resolved). A name
        that pg_catalog has is the built-in (pg_catalog is searched first)."""
        schema, name = (names[-2] if len(names) > 1 else None), names[-1]
        if schema in _SAFE_SCHEMAS:
            return
        if (schema, name) not in self._funcs:
            self._funcs[schema, name] = self.q(
                "SELECT p.oid, n.nspname, p.proname, l.lanname, p.provolatile, p.prokind, "
                "pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = "
                "p.pronamespace JOIN pg_language l ON l.oid = p.prolang WHERE p.proname = %s "
                "AND p.prokind IN ('f', 'p') AND CASE WHEN %s::text IS NULL THEN n.nspname = "
                "ANY(current_schemas(true)) ELSE n.nspname = %s END ORDER BY p.oid",
                [name, schema, schema],
            )
        rows = self._funcs[schema, name]
        if schema is None and any(r[1] == "pg_catalog" for r in rows):
            return
        for oid, nsp, proname, lang, volatile, kind, src in rows:
            if oid in scan.seen or nsp in _SAFE_SCHEMAS or (volatile != "v" and kind != "p"):
                continue  # STABLE and IMMUTABLE functions cannot write
            scan.seen.add(oid)
            scan.called.append(f"{nsp}.{proname}()")
            if lang == "plpgsql":
                self.scan_plpgsql(src, scan)
            elif lang == "sql":
                try:
                    fn = pglast.parse_sql(src)[0].stmt
                    # pg_get_functiondef() always returns a CREATE FUNCTION / PROCEDURE
                    assert isinstance(fn, ast.CreateFunctionStmt)
                    self.collect(
                        fn.sql_body
                        or [
                            pglast.parse_sql(o.arg[0].sval)
                            for o in fn.options or ()
                            if o.defname == "as"
                        ],
                        scan,
                    )
                except ParseError:
                    scan.gaps.append(f"the body of {nsp}.{proname}() does not parse")
            elif lang not in ("c", "internal"):  # compiled code: assumed not to write tables
                scan.gaps.append(f"{nsp}.{proname}() is LANGUAGE {lang}")

    def scan_do(self, node: ast.DoStmt, scan: _Scan) -> _Scan:
        assert node.args is not None  # DO always has a body
        opts = {o.defname: o.arg.sval for o in node.args}
        if opts.get("language", "plpgsql") != "plpgsql":
            scan.gaps.append(f"DO block in LANGUAGE {opts['language']}")
            return scan
        body, tag = opts["as"], "$_do_$"
        while tag in body:
            tag = tag[:-1] + "_$"
        self.scan_plpgsql(
            f"CREATE FUNCTION pg_temp._do() RETURNS void LANGUAGE plpgsql AS {tag}{body}{tag}", scan
        )
        return scan

    def scan_plpgsql(self, src: str, scan: _Scan) -> None:
        """Every SQL statement and expression of a PL/pgSQL function (a CREATE FUNCTION
        text), through collect(). Dynamic SQL is only seen through its string literals;
        a body that does not parse is searched by regular expressions."""
        try:
            tree = pglast.parse_plpgsql(src)
        except ParseError:
            for m in _BODY_RE.finditer(src):
                self.found(self.resolve_text(m.group(1)), scan)
            for lit in re.findall(r"'((?:[^']|'')*)'", src):
                self.literal(lit.replace("''", "'"), scan)
            scan.gaps.append("PL/pgSQL that does not parse (tables found by name only)")
            return
        for d in _json_dicts(tree):
            if (
                "PLpgSQL_stmt_dynexecute" in d
                or "PLpgSQL_stmt_dynfors" in d
                or ("dynquery" in d.get("PLpgSQL_stmt_open", {}))
            ):
                scan.gaps.append("dynamic SQL (only tables named in its literals are found)")
            expr = d.get("PLpgSQL_expr") or {}
            query, mode = expr.get("query"), expr.get("parseMode", 0)
            if not query or mode == 1:  # 1: a type name
                continue
            if mode >= 3:  # an assignment `target := expression`
                query = re.split(r":=|=", query, maxsplit=1)[-1]
            try:
                self.collect(pglast.parse_sql(query if mode == 0 else "SELECT " + query), scan)
            except ParseError:
                scan.gaps.append(f"a PL/pgSQL expression that does not parse ({query[:40]})")


def estimate(conn: psycopg.Connection, stmts: list[Statement]) -> None:
    """Planner estimates of what each target saves: est_rows = Plan Rows, est_bytes = Plan
    Rows * Plan Width of `SELECT * FROM {from_sql} WHERE {where}` (for a columns target:
    `SELECT ctid, <columns>`, ctid standing in for the key). A statement's estimate is the
    sum over its targets that could be estimated (0 without targets, None when none could).
    Each EXPLAIN runs in a savepoint: a failure (e.g. a table the file creates) is a note.
    Reads only, in a transaction of its own or a savepoint of the caller's, rolled back."""
    with conn.transaction() as tx:
        for st in stmts:
            st.est_rows, st.est_bytes = (None, None) if st.targets else (0, 0)
            for t in st.targets:
                table = sql.Identifier(t.schema, t.table)
                if t.columns is not None:
                    q = sql.SQL("SELECT ctid, {} FROM {}").format(
                        sql.SQL(", ").join(map(sql.Identifier, t.columns)), table
                    )
                elif t.where is None:
                    q = sql.SQL("SELECT * FROM {}").format(table)
                else:
                    q = sql.SQL("SELECT * FROM {} WHERE {}").format(
                        sql.SQL(t.from_sql or ""), sql.SQL(t.where)
                    )
                try:
                    with conn.transaction():
                        row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + q).fetchone()
                except psycopg.Error as exc:
                    st.notes.append(f"cannot estimate {t.schema}.{t.table}: {first_line(exc)}")
                    continue
                plan = (row[0] if row else [{}])[0].get("Plan", {})
                t.est_rows = int(plan.get("Plan Rows", 0))
                t.est_bytes = t.est_rows * int(plan.get("Plan Width", 0))
                st.est_rows = (st.est_rows or 0) + t.est_rows
                st.est_bytes = (st.est_bytes or 0) + t.est_bytes
        raise psycopg.Rollback(tx)
