"""Parse-tree helpers: walking pglast nodes, naming them, writing them back as SQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pglast import ast
from pglast.enums import AlterTableType, ObjectType, OnConflictAction
from pglast.stream import RawStream, maybe_double_quote_name

DML = (ast.UpdateStmt, ast.DeleteStmt, ast.InsertStmt, ast.MergeStmt)
COLUMN_CMDS = (AlterTableType.AT_DropColumn, AlterTableType.AT_AlterColumnType)
# Kinds not read off the statement's first words (which may be WITH ...).
_KINDS = {
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "InsertStmt": "INSERT",
    "MergeStmt": "MERGE",
    "SelectStmt": "SELECT",
}


def deparse(node: Any) -> str:
    return RawStream()(node)


def ident(*names: str) -> str:
    """Dot-joined names, double-quoted where PostgreSQL needs it (pglast's rules)."""
    return ".".join(maybe_double_quote_name(n) for n in names)


def walk(node: Any) -> Iterator[Any]:
    """Every pglast node under node, node included, depth first."""
    if isinstance(node, ast.Node):
        yield node
        for attr in node:
            yield from walk(getattr(node, attr))
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from walk(item)


def json_dicts(obj: Any) -> Iterator[dict[str, Any]]:
    if isinstance(obj, dict):
        yield obj
    for v in obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ():
        yield from json_dicts(v)


def kind_of(node: Any, text: str) -> str:
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


def exists_sql(prefix: str, froms: list[str], cond: str | None) -> str:
    q = prefix + "SELECT 1" + (" FROM " + ", ".join(froms) if froms else "")
    return f"EXISTS ({q}{' WHERE ' + cond if cond else ''})"


def name_parts(rv: ast.RangeVar) -> list[str]:
    return [p for p in (rv.schemaname, rv.relname) if p]


def out_columns(sel: Any) -> int | None:
    """How many columns a SELECT / VALUES yields, when the parse tree tells."""
    if not isinstance(sel, ast.SelectStmt):
        return None
    if sel.valuesLists:
        return len(sel.valuesLists[0])
    if sel.larg is not None:
        return out_columns(sel.larg)
    stars = any(isinstance(n, ast.A_Star) for n in walk(sel.targetList))
    return None if stars or not sel.targetList else len(sel.targetList)
