"""analyze(): the file parsed statement by statement, each dispatched on its kind."""

from __future__ import annotations

import bisect
from typing import Any

import pglast
import psycopg
from pglast import ast
from pglast.enums import OnConflictAction, VariableSetKind
from pglast.parser import ParseError

from ...errors import RecoveryError
from . import ddl
from .context import Context
from .model import Scan, Statement
from .nodes import DML, kind_of, name_parts, walk
from .rows import dml, finish
from .scan import collect, fallback

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


def analyze(conn: psycopg.Connection, text: str, *, source: str = "FILE") -> list[Statement]:
    """Per statement of a migration file, the rows and columns of existing tables it could
    destroy (see the package docstring). Reads the catalog only, in a transaction of its own
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
        cx, stmts = Context(conn), []
        for number, raw in enumerate(raws, 1):
            loc = raw.stmt_location
            assert loc is not None  # the parser always sets it (0 for the first statement)
            end = loc + raw.stmt_len if raw.stmt_len else len(text)
            i = bisect.bisect_left(starts, loc)  # first token, past comments
            start = starts[i] if i < len(starts) else loc
            body = text[start:end].strip()
            st = Statement(
                number, text.count("\n", 0, start) + 1, body, kind_of(raw.stmt, body), [], []
            )
            statement(cx, st, raw.stmt)
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


def statement(cx: Context, st: Statement, node: Any) -> None:
    """Add to st what its parse tree node could destroy, and note what the file did."""
    if cx.path is not None:  # write the tables as the file's search_path finds them
        ctes = {n.ctename for n in walk(node) if isinstance(n, ast.CommonTableExpr)}
        for rv in walk(node):
            if isinstance(rv, ast.RangeVar) and not rv.schemaname and rv.relname not in ctes:
                assert rv.relname is not None  # the parser always names the relation
                rel = cx.resolve([rv.relname])
                rv.schemaname = rel.schema if rel else None
    if isinstance(node, ast.ExplainStmt) and any(  # EXPLAIN ANALYZE runs its statement
        o.defname == "analyze"
        and str(getattr(o.arg, "sval", getattr(o.arg, "ival", 1))).lower()
        not in ("false", "off", "0", "no")
        for o in node.options or ()
    ):
        st.kind, node = "EXPLAIN ANALYZE " + kind_of(node.query, ""), node.query
    name, rows = type(node).__name__, []
    if isinstance(node, DML) or getattr(node, "withClause", None) is not None:
        rows = dml(cx, st, node, set())
        oc = getattr(node, "onConflictClause", None)
        if (
            isinstance(node, ast.InsertStmt)
            and not rows
            and (oc is None or oc.action != OnConflictAction.ONCONFLICT_UPDATE)
        ):
            st.notes.append("destroys no existing row (INSERT only adds rows)")
    elif type(node) in ddl.BY_NODE:  # TRUNCATE, DROP, ALTER TABLE
        ddl.BY_NODE[type(node)](cx, st, node)
    elif isinstance(node, (ast.DoStmt, ast.ExecuteStmt)) or (
        name not in _HARMLESS and name not in ("CallStmt", "CopyStmt")
    ):
        scan = collect(cx, node, Scan())
        if isinstance(node, ast.ExecuteStmt) and node.name not in cx.prepared:
            scan.gaps.append(f"{node.name} was not PREPAREd in this file")
        elif not isinstance(node, (ast.DoStmt, ast.ExecuteStmt)):
            scan.gaps.append("not a statement this analysis knows")
        rows = fallback(cx, st, scan, "DO block" if name == "DoStmt" else st.kind)
    elif isinstance(node, ast.CopyStmt) and node.is_from:
        st.notes.append("COPY FROM only adds rows: destroys no existing row")
        rel = cx.resolve(name_parts(node.relation)) if node.relation else None
        if rel:
            cx.written.setdefault(rel.relid, st.number)
    if isinstance(node, ast.PrepareStmt):
        assert node.name is not None  # PREPARE always names its statement
        cx.prepared[node.name] = node.query
    if isinstance(node, ast.VariableSetStmt) and node.name in ("search_path", None):
        set_path(cx, st, node)
    if name not in _NO_CALLS:  # volatile user functions the statement runs
        scan = collect(cx, node, Scan(), calls_only=True)
        if scan.called or name == "CallStmt":
            scan.gaps += [] if scan.called else ["no such procedure (yet)"]
            rows += fallback(cx, st, scan, "calls " + (", ".join(scan.called) or "it"))
    finish(cx, st, rows)
    if not st.targets and not st.notes:
        st.notes.append("destroys no existing row")
    for t in st.targets:
        cx.written.setdefault(t.relid, st.number)


def set_path(cx: Context, st: Statement, node: ast.VariableSetStmt) -> None:
    if node.kind != VariableSetKind.VAR_SET_VALUE:  # DEFAULT, RESET: the session's again
        cx.path = None
        return
    user = cx.q("SELECT current_user")[0][0]
    assert node.args is not None  # SET ... TO <value> always has a value
    names = [
        user if a.val.sval == "$user" else a.val.sval
        for a in node.args
        if isinstance(a.val, ast.String) and a.val.sval
    ]
    cx.path = ([] if "pg_catalog" in names else ["pg_catalog"]) + names
    st.notes.append(
        "later statements' tables are resolved with this search_path and "
        "saved schema-qualified (functions: with the session's)"
    )
