"""Argument values and references: `${...}` found and resolved, values coerced to an
argument's type, results made JSON-plain."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

REF = re.compile(r"\$\{([^}]*)\}")
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce(typ: str, value: Any) -> Any:
    """An argument value of the given type (from YAML or a resolved reference); ValueError."""
    if typ == "str":
        if isinstance(value, (dict, list)):
            raise ValueError("a text value")
        return as_text(value)
    if typ == "int":
        if isinstance(value, bool) or not re.fullmatch(r"-?\d+", str(value).strip()):
            raise ValueError("a whole number")
        return int(str(value).strip())
    if typ == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in TRUE_WORDS + FALSE_WORDS:
            return str(value).lower() in TRUE_WORDS
        raise ValueError("true or false")
    if typ in ("list", "strs", "ints"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, list) or any(isinstance(v, (dict, list)) for v in value):
            raise ValueError("a list of values" if typ == "list" else "a value or a list")
        return [coerce("int" if typ == "ints" else "str", v) for v in value]
    if typ == "expect":
        if isinstance(value, dict):
            if set(value) != {"rows"}:
                raise ValueError("a value, or {rows: N}")
            return {"rows": coerce("int", value["rows"])}
        if isinstance(value, list):
            raise ValueError("a value, or {rows: N}")
    return value


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def refs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [m.strip() for m in REF.findall(value)]
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs(v)]
    return []


def resolve(value: Any, lookup: Callable[[str], Any]) -> Any:
    """Substitute ${...} references: a whole-string reference keeps the value's type."""
    if isinstance(value, str):
        whole = REF.fullmatch(value.strip())
        if whole:
            return lookup(whole.group(1).strip())
        return REF.sub(lambda m: as_text(lookup(m.group(1).strip())), value)
    if isinstance(value, list):
        return [resolve(v, lookup) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, lookup) for k, v in value.items()}
    return value


def plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
