"""The `when` condition language: parsed into a tree of tuples, evaluated against a
lookup of references; never eval()'d."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..errors import RecoveryError

_TOKEN = re.compile(
    r"""\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>'[^']*'|"[^"]*")"""
    r"""|(?P<op>==|!=|<=|>=|<|>|\(|\))|(?P<name>[A-Za-z_][\w.]*))"""
)
_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
_WORDS = {"true": True, "false": False, "null": None}


def parse_condition(text: str) -> Any:
    """Parse a `when` expression into a tree of tuples; ValueError says what is wrong."""
    toks: list[tuple[str, str]] = []
    pos, text = 0, str(text)
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"unexpected {text[pos:].strip()[:20]!r}")
        kind = m.lastgroup or ""
        toks.append((kind, m.group(kind)))
        pos = m.end()
    toks.append(("end", ""))
    i = 0

    def peek(*values: str) -> bool:
        return toks[i][1] in values and toks[i][0] in ("op", "name")

    def take() -> tuple[str, str]:
        nonlocal i
        i += 1
        return toks[i - 1]

    def expr() -> Any:
        left = conj()
        while peek("or"):
            take()
            left = ("or", left, conj())
        return left

    def conj() -> Any:
        left = neg()
        while peek("and"):
            take()
            left = ("and", left, neg())
        return left

    def neg() -> Any:
        if peek("not"):
            take()
            return ("not", neg())
        left = atom()
        if toks[i][0] == "op" and toks[i][1] in _CMP:
            return ("cmp", take()[1], left, atom())
        return left

    def atom() -> Any:
        kind, value = take()
        if kind == "num":
            return ("lit", float(value) if "." in value else int(value))
        if kind == "str":
            return ("lit", value[1:-1])
        if kind == "op" and value == "(":
            inner = expr()
            if take()[1] != ")":
                raise ValueError("a '(' is not closed")
            return inner
        if kind == "name" and value in _WORDS:
            return ("lit", _WORDS[value])
        if kind == "name" and value not in ("and", "or", "not"):
            return ("ref", value)
        raise ValueError(f"expected a value, found {value or 'the end'!r}")

    tree = expr()
    if toks[i][0] != "end":
        raise ValueError(f"unexpected {toks[i][1]!r}")
    return tree


def condition_refs(tree: Any) -> list[str]:
    if tree[0] == "ref":
        return [tree[1]]
    return [r for part in tree[1:] if isinstance(part, tuple) for r in condition_refs(part)]


def evaluate(tree: Any, lookup: Callable[[str], Any]) -> Any:
    op = tree[0]
    if op == "lit":
        return tree[1]
    if op == "ref":
        return lookup(tree[1])
    if op == "not":
        return not evaluate(tree[1], lookup)
    if op in ("and", "or"):
        left = evaluate(tree[1], lookup)
        if bool(left) == (op == "or"):
            return left
        return evaluate(tree[2], lookup)
    a, b = evaluate(tree[2], lookup), evaluate(tree[3], lookup)
    if tree[1] not in ("==", "!=") and (a is None or b is None):
        return False  # a value that is not there (a skipped step) is never > or < anything
    try:
        return _CMP[tree[1]](a, b)
    except TypeError:
        raise RecoveryError(f"cannot compare {a!r} {tree[1]} {b!r}") from None
