"""What cannot be bounded (DO, CALL, function bodies, dynamic SQL): the whole tables its
code names in a destructive statement or a string literal."""

from __future__ import annotations

import re
from typing import Any

import pglast
from pglast import ast
from pglast.enums import DropBehavior, ObjectType, OnConflictAction
from pglast.parser import ParseError

from .context import Context
from .model import Rel, Row, Scan, Statement, Target
from .nodes import COLUMN_CMDS, json_dicts, kind_of, name_parts, walk

_SAFE_SCHEMAS = ("pg_catalog", "information_schema")
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


def fallback(cx: Context, st: Statement, scan: Scan, what: str) -> list[Row]:
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
        Row(
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


def collect(cx: Context, node: Any, scan: Scan, calls_only: bool = False) -> Scan:
    """Tables that code (parse trees) may destroy: targets of destructive statements,
    string literals naming a table or holding SQL, bodies of the volatile user functions
    it calls. calls_only: only follow function calls."""
    for n in walk(node):
        if isinstance(n, ast.FuncCall):
            assert n.funcname is not None  # a call always names its function
            scan_function(cx, [s.sval for s in n.funcname], scan)
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
                and any(c.subtype in COLUMN_CMDS for c in n.cmds or ())
            )
        ):
            assert n.relation is not None  # the parser always names the table
            found(cx, cx.resolve(name_parts(n.relation)), scan)
        elif isinstance(n, ast.TruncateStmt):
            assert n.relations is not None  # TRUNCATE always names a table
            rels = [r for r in (cx.resolve(name_parts(rv)) for rv in n.relations) if r]
            if n.behavior == DropBehavior.DROP_CASCADE:
                rels += cx.fk_closure([r.relid for r in rels])
            for r in rels:
                found(cx, r, scan)
        elif isinstance(n, ast.DropStmt) and n.removeType == ObjectType.OBJECT_TABLE:
            assert n.objects is not None  # DROP TABLE always names a table
            for obj in n.objects:
                found(cx, cx.resolve([s.sval for s in obj][-2:]), scan)
        elif isinstance(n, ast.DropOwnedStmt) or (
            isinstance(n, ast.DropStmt) and n.behavior == DropBehavior.DROP_CASCADE
        ):
            scan.gaps.append(f"{kind_of(n, 'DROP OWNED')} may drop tables or columns")
        elif isinstance(n, ast.DoStmt):
            scan_do(cx, n, scan)
        elif isinstance(n, ast.ExecuteStmt) and n.name in cx.prepared:
            collect(cx, cx.prepared[n.name], scan)
        elif isinstance(n, ast.A_Const) and isinstance(n.val, ast.String) and n.val.sval:
            literal(cx, n.val.sval, scan)
    return scan


def found(cx: Context, rel: Rel | None, scan: Scan) -> None:
    for r in (cx.base_tables(rel.relid) if rel.relkind == "v" else [rel]) if rel else ():
        if r.relkind in ("r", "p"):
            scan.found.setdefault(r.relid, r)


def literal(cx: Context, text: str, scan: Scan) -> None:
    """A string literal in code: SQL to scan, or the name of a table (dynamic SQL)."""
    if _SQL_RE.match(text):
        try:
            collect(cx, pglast.parse_sql(text), scan)
        except ParseError:
            pass
    elif _NAME_RE.match(text):
        found(cx, cx.resolve_text(text.strip()), scan)


def scan_function(cx: Context, names: list[str], scan: Scan) -> None:
    """Follow a call into the bodies of the volatile user functions it may mean: every
    overload of the name on the search_path (argument types are not resolved). A name
    that pg_catalog has is the built-in (pg_catalog is searched first)."""
    schema, name = (names[-2] if len(names) > 1 else None), names[-1]
    if schema in _SAFE_SCHEMAS:
        return
    if (schema, name) not in cx.funcs:
        cx.funcs[schema, name] = cx.q(
            "SELECT p.oid, n.nspname, p.proname, l.lanname, p.provolatile, p.prokind, "
            "pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = "
            "p.pronamespace JOIN pg_language l ON l.oid = p.prolang WHERE p.proname = %s "
            "AND p.prokind IN ('f', 'p') AND CASE WHEN %s::text IS NULL THEN n.nspname = "
            "ANY(current_schemas(true)) ELSE n.nspname = %s END ORDER BY p.oid",
            [name, schema, schema],
        )
    rows = cx.funcs[schema, name]
    if schema is None and any(r[1] == "pg_catalog" for r in rows):
        return
    for oid, nsp, proname, lang, volatile, kind, src in rows:
        if oid in scan.seen or nsp in _SAFE_SCHEMAS or (volatile != "v" and kind != "p"):
            continue  # STABLE and IMMUTABLE functions cannot write
        scan.seen.add(oid)
        scan.called.append(f"{nsp}.{proname}()")
        if lang == "plpgsql":
            scan_plpgsql(cx, src, scan)
        elif lang == "sql":
            try:
                fn = pglast.parse_sql(src)[0].stmt
                # pg_get_functiondef() always returns a CREATE FUNCTION / PROCEDURE
                assert isinstance(fn, ast.CreateFunctionStmt)
                collect(
                    cx,
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


def scan_do(cx: Context, node: ast.DoStmt, scan: Scan) -> Scan:
    assert node.args is not None  # DO always has a body
    opts = {o.defname: o.arg.sval for o in node.args}
    if opts.get("language", "plpgsql") != "plpgsql":
        scan.gaps.append(f"DO block in LANGUAGE {opts['language']}")
        return scan
    body, tag = opts["as"], "$_do_$"
    while tag in body:
        tag = tag[:-1] + "_$"
    scan_plpgsql(
        cx, f"CREATE FUNCTION pg_temp._do() RETURNS void LANGUAGE plpgsql AS {tag}{body}{tag}", scan
    )
    return scan


def scan_plpgsql(cx: Context, src: str, scan: Scan) -> None:
    """Every SQL statement and expression of a PL/pgSQL function (a CREATE FUNCTION
    text), through collect(). Dynamic SQL is only seen through its string literals;
    a body that does not parse is searched by regular expressions."""
    try:
        tree = pglast.parse_plpgsql(src)
    except ParseError:
        for m in _BODY_RE.finditer(src):
            found(cx, cx.resolve_text(m.group(1)), scan)
        for lit in re.findall(r"'((?:[^']|'')*)'", src):
            literal(cx, lit.replace("''", "'"), scan)
        scan.gaps.append("PL/pgSQL that does not parse (tables found by name only)")
        return
    for d in json_dicts(tree):
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
            collect(cx, pglast.parse_sql(query if mode == 0 else "SELECT " + query), scan)
        except ParseError:
            scan.gaps.append(f"a PL/pgSQL expression that does not parse ({query[:40]})")
