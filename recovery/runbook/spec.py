"""The runbook file format: parsing, validation, parameters, references and conditions.

A runbook is YAML: `name`, `description`, `parameters` (name -> type, default, ...) and
`steps` (ordered; each an `id`, a `kind` from KINDS with its arguments, and an optional
`when`).  String values may hold `${params.NAME}`, `${steps.ID.FIELD}` and `${run.id}`;
a `when` is a small expression language parsed here (never eval()'d).  `load()`
reports every problem at once, each with file:line and a fix.  Nothing here touches a
database; runbook.py runs what this module accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..capture.prune import parse_duration
from ..errors import RecoveryError

PARAM_TYPES = ("string", "int", "number", "bool", "duration", "table", "file")
PARAM_KEYS = ("type", "default", "required", "choices", "min", "max", "pattern", "description")
TOP_KEYS = ("name", "description", "parameters", "steps")
STEP_KEYS = ("id", "kind", "when", "description")
_ID = re.compile(r"[a-z][a-z0-9_]*")
_REF = re.compile(r"\$\{([^}]*)\}")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class RunbookInvalid(RecoveryError):
    """A runbook with problems: `errors` holds one line per problem (file:line, fix)."""

    def __init__(self, errors: list[str]) -> None:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(errors[0] + more)
        self.errors = errors


@dataclass
class Param:
    name: str
    type: str
    default: Any = None
    required: bool = True
    choices: list[Any] | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    description: str = ""


@dataclass
class Step:
    id: str
    kind: str
    args: dict[str, Any]
    when: str | None = None
    cond: Any = None  # the parsed `when`


@dataclass
class Runbook:
    name: str
    description: str
    params: dict[str, Param]
    steps: list[Step]
    file: str
    definition: dict[str, Any] = field(repr=False, default_factory=dict)


# -- conditions: a tiny language, parsed here, never eval()'d -------------------------
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


# -- step kinds -------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """A step kind: its arguments, the result fields later steps may use, and whether it
    runs in --dry-run (read-only, or it checks the dry run itself)."""

    args: dict[str, tuple[str, bool]]  # argument -> (type, required)
    fields: tuple[str, ...]
    dry: bool


SELECTOR = {
    "tag": ("strs", False),
    "txid": ("ints", False),
    "since": ("str", False),
    "until": ("str", False),
    "table": ("strs", False),
    "user": ("strs", False),
    "app": ("strs", False),
}
_PLANNED = ("rows", "table_count", "tables", "conflicts", "status")
KINDS: dict[str, Kind] = {
    "capture_on": Kind({"tables": ("list", True)}, ("tables",), False),
    "capture_off": Kind({"tables": ("list", True)}, ("tables",), False),
    "mark": Kind(
        {"name": ("str", True), "note": ("str", False)}, ("name", "at", "created_by", "note"), False
    ),
    "analyze_sql": Kind(
        {"file": ("str", True)}, ("file", "statements", "tables", "est_rows", "est_bytes"), True
    ),
    "snapshot": Kind(
        {
            "name": ("str", True),
            "tables": ("list", False),
            "where": ("strs", False),
            "for_sql": ("str", False),
            "store": ("str", False),
        },
        ("name", "store", "created_at", "created_by", "tables", "rows", "bytes"),
        False,
    ),
    "snapshot_verify": Kind(
        {"name": ("str", True), "store": ("str", False)}, ("name", "store", "ok", "items"), True
    ),
    "changes": Kind(
        dict(SELECTOR),
        ("selector", "statements", "rows", "first", "last", "by_table", "by_tag", "by_transaction"),
        True,
    ),
    "diff": Kind({**SELECTOR, "limit": ("int", False)}, ("count", "changes"), True),
    "rollback_plan": Kind(
        {**SELECTOR, "on_conflict": ("str", False)}, (*_PLANNED, "selector", "on_conflict"), True
    ),
    "rollback_apply": Kind(
        {
            **SELECTOR,
            "on_conflict": ("str", False),
            "batch_size": ("int", False),
            "lock_timeout": ("str", False),
            "approval": ("str", False),
        },
        (*_PLANNED, "op_id", "selector", "on_conflict", "undo_tag", "batches", "approval"),
        False,
    ),
    "restore_plan": Kind(
        {
            "snapshot": ("str", True),
            "store": ("str", False),
            "tables": ("list", False),
            "delete_new": ("bool", False),
        },
        (*_PLANNED, "snapshot", "store", "created_at"),
        True,
    ),
    "restore": Kind(
        {
            "snapshot": ("str", True),
            "store": ("str", False),
            "tables": ("list", False),
            "delete_new": ("bool", False),
            "lock_timeout": ("str", False),
            "approval": ("str", False),
        },
        (*_PLANNED, "op_id", "snapshot", "store", "tag", "approval"),
        False,
    ),
    "sql_check": Kind(
        {"query": ("str", True), "expect": ("expect", True)},
        ("query", "expect", "actual", "rows", "ok"),
        True,
    ),
    "approval": Kind(
        {"for": ("str", True), "max_rows": ("int", False), "max_tables": ("int", False)},
        (
            "needed",
            "req_id",
            "status",
            "rows",
            "tables",
            "plan_hash",
            "requested_by",
            "approved_by",
        ),
        True,
    ),
    "pause": Kind({"message": ("str", True)}, ("message",), True),
    "notify": Kind(
        {"message": ("str", True), "webhook": ("str", False)},
        ("message", "url", "sent", "warning"),
        True,
    ),
}
_STEP_ARGS: dict[str, dict[str, tuple[str, ...]]] = {
    "approval": {"for": ("rollback_plan", "restore_plan")},
    "rollback_apply": {"approval": ("approval",)},
    "restore": {"approval": ("approval",)},
}


# -- values: arguments, parameters, references ----------------------------------------
def coerce(typ: str, value: Any) -> Any:
    """An argument value of the given type (from YAML or a resolved reference); ValueError."""
    if typ == "str":
        if isinstance(value, (dict, list)):
            raise ValueError("a text value")
        return _text(value)
    if typ == "int":
        if isinstance(value, bool) or not re.fullmatch(r"-?\d+", str(value).strip()):
            raise ValueError("a whole number")
        return int(str(value).strip())
    if typ == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in _TRUE + _FALSE:
            return str(value).lower() in _TRUE
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


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def param_value(p: Param, value: Any) -> Any:
    """A parameter's value, checked against its declaration; RecoveryError names the fix."""
    want = {"int": "a whole number", "number": "a number", "bool": "true or false"}
    try:
        if p.type == "int":
            value = coerce("int", value)
        elif p.type == "number":
            if isinstance(value, bool):
                raise ValueError
            value = value if isinstance(value, (int, float)) else float(str(value))
        elif p.type == "bool":
            value = coerce("bool", value)
        else:
            value = coerce("str", value)
    except ValueError:
        raise RecoveryError(
            f"parameter {p.name} must be {want.get(p.type, 'text')}, not {value!r}"
        ) from None
    if p.type == "duration":
        try:
            parse_duration(value)
        except RecoveryError:
            raise RecoveryError(
                f"parameter {p.name} must be a duration such as 7d, 12h or "
                f"'30 minutes', not {value!r}"
            ) from None
    if p.type == "file" and not Path(value).is_file():
        raise RecoveryError(f"parameter {p.name}: file {value} does not exist")
    if p.type == "table" and not re.fullmatch(r'\s*[\w$."]+(\s*,\s*[\w$."]+)*\s*', value):
        raise RecoveryError(
            f"parameter {p.name} must name tables (schema.table, comma-separated), not {value!r}"
        )
    if p.choices is not None and value not in p.choices:
        raise RecoveryError(
            f"parameter {p.name} must be one of {', '.join(map(str, p.choices))}, not {value!r}"
        )
    numeric = p.type in ("int", "number")
    if numeric and (p.min is not None and value < p.min or p.max is not None and value > p.max):
        bounds = (
            f"between {p.min} and {p.max}"
            if p.min is not None and p.max is not None
            else f"at least {p.min}"
            if p.min is not None
            else f"at most {p.max}"
        )
        raise RecoveryError(f"parameter {p.name} must be {bounds}, not {value}")
    if p.pattern is not None and not re.fullmatch(p.pattern, str(value)):
        raise RecoveryError(f"parameter {p.name} must match {p.pattern}, not {value!r}")
    return value


def parse_param_args(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`--param K=V` options as a mapping; a repeated or malformed one is an error."""
    out: dict[str, str] = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise RecoveryError(f"--param {item!r}: write it as NAME=VALUE")
        if k.strip() in out:
            raise RecoveryError(f"--param {k.strip()} is given twice: give it once")
        out[k.strip()] = v
    return out


def bind_params(rb: Runbook, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter's value: given, else its default; unknown or missing ones are errors."""
    unknown = sorted(set(given) - set(rb.params))
    if unknown:
        raise RecoveryError(
            f"unknown parameter {unknown[0]!r} for runbook {rb.name}: it takes "
            f"{', '.join(rb.params) or 'no parameters'}"
        )
    out = {}
    for name, p in rb.params.items():
        if name in given:
            out[name] = param_value(p, given[name])
        elif p.required:
            raise RecoveryError(
                f"runbook {rb.name} needs parameter {name} ({p.type}"
                f"{': ' + p.description if p.description else ''}): pass "
                f"--param {name}=VALUE"
            )
        else:
            out[name] = p.default
    return out


def refs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [m.strip() for m in _REF.findall(value)]
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs(v)]
    return []


def resolve(value: Any, lookup: Callable[[str], Any]) -> Any:
    """Substitute ${...} references: a whole-string reference keeps the value's type."""
    if isinstance(value, str):
        whole = _REF.fullmatch(value.strip())
        if whole:
            return lookup(whole.group(1).strip())
        return _REF.sub(lambda m: _text(lookup(m.group(1).strip())), value)
    if isinstance(value, list):
        return [resolve(v, lookup) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, lookup) for k, v in value.items()}
    return value


def step_args(
    step: Step,
    lookup: Callable[[str], Any],
    sql_literal: Callable[[Any], str],
    partial: bool = False,
) -> dict[str, Any]:
    """A step's arguments, references resolved and types checked; absent when null."""
    out = {}
    for name, raw in step.args.items():
        if name == "query" and isinstance(raw, str) and not _REF.fullmatch(raw.strip()):
            # Values go into a query as SQL literals, never as SQL text (a query that is
            # one reference, e.g. ${params.check_query}, is that value's text).
            value: Any = _REF.sub(lambda m: sql_literal(lookup(m.group(1).strip())), raw)
        else:
            value = resolve(raw, lookup)
        if value is None or value == "" and KINDS[step.kind].args[name][0] != "str":
            continue
        try:
            out[name] = coerce(KINDS[step.kind].args[name][0], value)
        except ValueError as exc:
            raise RecoveryError(
                f"step {step.id}: argument {name} must be {exc}, not {value!r}"
            ) from None
    missing = [a for a, (_t, req) in KINDS[step.kind].args.items() if req and a not in out]
    if missing and not partial:
        raise RecoveryError(f"step {step.id}: argument {missing[0]} is empty")
    return out


# -- loading and validation ------------------------------------------------------------
def _lines(
    node: yaml.Node,
    path: tuple[Any, ...],
    out: dict[tuple[Any, ...], int],
    dups: list[tuple[int, str]],
) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else k.start_mark.line
            if key in seen:
                dups.append((k.start_mark.line + 1, str(key)))
            seen.add(key)
            sub = (*path, key)  # named: mypy takes `out[(*path, key)]` for 3.11 syntax
            out[sub] = k.start_mark.line + 1
            _lines(v, sub, out, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _lines(v, (*path, i), out, dups)


def load(path: str | Path) -> Runbook:
    """Read and validate a runbook file; RunbookInvalid lists every problem with its line."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecoveryError(f"cannot read runbook {path}: {exc}") from None
    return loads(text, str(path))


def loads(text: str, source: str = "RUNBOOK") -> Runbook:
    lines: dict[tuple[Any, ...], int] = {}
    dups: list[tuple[int, str]] = []
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise RunbookInvalid(
            [
                f"{where}: YAML syntax error: {exc.problem or exc.context}: fix the "
                "indentation, quoting or colon there"
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise RunbookInvalid([f"{source}: YAML error: {exc}"]) from None
    if node is not None:
        _lines(node, (), lines, dups)
    errors = [f"{source}:{ln}: duplicate key {k!r}: give each key once" for ln, k in dups]
    rb = from_definition(data, source, lines, errors)
    if errors:
        raise RunbookInvalid(errors)
    return rb


def from_definition(
    data: Any,
    source: str = "RUNBOOK",
    lines: dict[tuple[Any, ...], int] | None = None,
    errors: list[str] | None = None,
) -> Runbook:
    """Build and validate a runbook from its parsed YAML (a run stores it as its definition)."""
    lines = lines or {}
    errs = errors if errors is not None else []

    def err(path: tuple[Any, ...], msg: str) -> None:
        while path and path not in lines:
            path = path[:-1]
        errs.append(f"{source}:{lines.get(path, 1)}: {msg}")

    if not isinstance(data, dict):
        err((), "a runbook is a mapping with name, description, parameters and steps")
        raise RunbookInvalid(errs)
    for k in data:
        if k not in TOP_KEYS:
            err((k,), f"unknown top-level key {k!r}: use {', '.join(TOP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        err(("name",), "name is missing: add `name: <text>`")
    params = _validate_params(data.get("parameters") or {}, err)
    steps = _validate_steps(data.get("steps"), params, err)
    if errors is None and errs:
        raise RunbookInvalid(errs)
    return Runbook(
        str(name),
        str(data.get("description") or ""),
        params,
        steps,
        source,
        json.loads(json.dumps(data, default=str)),
    )


def _validate_params(raw: Any, err: Callable[[tuple[Any, ...], str], None]) -> dict[str, Param]:
    out: dict[str, Param] = {}
    if not isinstance(raw, dict):
        err(("parameters",), "parameters must map each name to {type: ..., default: ...}")
        return out
    for pname, spec in raw.items():
        at = ("parameters", pname)
        if not isinstance(pname, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", pname):
            err(at, f"parameter name {pname!r} must be lower case letters, digits and _")
            continue
        if not isinstance(spec, dict):
            err(at, f"parameter {pname} must be a mapping: {{type: string, default: ...}}")
            continue
        for k in spec:
            if k not in PARAM_KEYS:
                err(
                    (*at, k), f"unknown key {k!r} in parameter {pname}: use {', '.join(PARAM_KEYS)}"
                )
        typ = spec.get("type")
        if typ not in PARAM_TYPES:
            err(
                (*at, "type"),
                f"parameter {pname} has type {typ!r}: use one of {', '.join(PARAM_TYPES)}",
            )
            continue
        p = Param(
            pname,
            typ,
            spec.get("default"),
            spec.get("required", "default" not in spec),
            spec.get("choices"),
            spec.get("min"),
            spec.get("max"),
            spec.get("pattern"),
            str(spec.get("description") or ""),
        )
        if p.pattern is not None:
            try:
                re.compile(p.pattern)
            except re.error as exc:
                err((*at, "pattern"), f"parameter {pname}: pattern does not compile ({exc})")
                p.pattern = None
        for k in ("min", "max"):
            bound = spec.get(k)
            if bound is not None and (
                typ not in ("int", "number")
                or isinstance(bound, bool)
                or not isinstance(bound, (int, float))
            ):
                err((*at, k), f"parameter {pname}: {k} needs type int or number and a number")
                setattr(p, k, None)
        if p.choices is not None and not isinstance(p.choices, list):
            err((*at, "choices"), f"parameter {pname}: choices must be a list")
            p.choices = None
        if p.default is not None and typ != "file":  # a file default may be made later
            try:
                param_value(p, p.default)
            except RecoveryError as exc:
                err((*at, "default"), f"default of {exc}: fix the default")
        out[pname] = p
    return out


def _validate_steps(
    raw: Any, params: dict[str, Param], err: Callable[[tuple[Any, ...], str], None]
) -> list[Step]:
    if not isinstance(raw, list) or not raw:
        err(("steps",), "steps must be a non-empty list of {id: ..., kind: ...}")
        return []
    ids = [s.get("id") if isinstance(s, dict) else None for s in raw]
    steps: list[Step] = []
    for n, s in enumerate(raw):
        at = ("steps", n)
        if not isinstance(s, dict):
            err(at, "each step is a mapping with id, kind and its arguments")
            continue
        sid, kind = s.get("id"), s.get("kind")
        if not isinstance(sid, str) or not _ID.fullmatch(sid):
            err((*at, "id"), f"step {n + 1}: id {sid!r} must match [a-z][a-z0-9_]*: add `id: name`")
            continue
        if sid in ids[:n]:
            err((*at, "id"), f"duplicate step id {sid!r}: give each step its own id")
        if kind not in KINDS:
            err((*at, "kind"), f"step {sid}: unknown kind {kind!r}: use one of {', '.join(KINDS)}")
            continue
        spec = KINDS[kind]
        args = {k: v for k, v in s.items() if k not in STEP_KEYS}
        for k, v in args.items():
            if k not in spec.args:
                err(
                    (*at, k),
                    f"step {sid}: unknown key {k!r} for kind {kind}: it takes "
                    f"{', '.join(spec.args)}",
                )
            elif not refs(v) and v is not None:
                try:
                    coerce(spec.args[k][0], v)
                    if spec.args[k][0] == "list" and not isinstance(v, list):
                        raise ValueError("a list, e.g. [orders, customers]")
                except ValueError as exc:
                    err((*at, k), f"step {sid}: {k} must be {exc}, not {v!r}")
        for k, (_t, req) in spec.args.items():
            if req and k not in args:
                err(at, f"step {sid}: kind {kind} needs argument {k!r}: add `{k}: ...`")
        step = Step(sid, kind, {k: v for k, v in args.items() if k in spec.args}, s.get("when"))
        found = [(k, r) for k, v in args.items() for r in refs(v)]
        if isinstance(step.when, bool):
            step.cond = ("lit", step.when)
        elif step.when is not None:
            try:
                step.cond = parse_condition(step.when)
                found += [("when", r) for r in condition_refs(step.cond)]
            except ValueError as exc:
                err(
                    (*at, "when"),
                    f"step {sid}: condition {step.when!r} does not parse ({exc}):"
                    " use comparisons, and/or/not, params.X, steps.ID.FIELD",
                )
        for k, wanted in _STEP_ARGS.get(kind, {}).items():
            target = args.get(k)
            if isinstance(target, str):
                found.append((k, f"steps.{target}.args"))  # an earlier step: _check_ref
                j = ids.index(target) if target in ids else -1
                if 0 <= j < n and raw[j].get("kind") not in wanted:
                    err(
                        (*at, k),
                        f"step {sid}: {k} must name a {' or '.join(wanted)} step, "
                        f"and {target} is a {raw[j].get('kind')}",
                    )
        for k, r in found:
            problem = _check_ref(r, n, raw, ids, params)
            if problem:
                err((*at, k), f"step {sid}: {k}: {problem}")
        steps.append(step)
    return steps


def _check_ref(
    ref: str, n: int, raw: list[Any], ids: list[Any], params: dict[str, Param]
) -> str | None:
    parts = ref.split(".")
    if parts[0] == "params":
        if len(parts) != 2 or parts[1] not in params:
            return (
                f"{ref} names no parameter: declare it under parameters (known: "
                f"{', '.join(params) or 'none'})"
            )
        return None
    if parts[0] == "run":
        return (
            None
            if parts[1:] in (["id"], ["name"], ["dry_run"])
            else f"{ref}: use run.id, run.name or run.dry_run"
        )
    if parts[0] != "steps" or len(parts) < 3:
        return f"{ref!r} is not a reference: use params.NAME or steps.ID.FIELD"
    if parts[1] not in ids:
        return f"{ref} names no step: the step ids are {', '.join(map(str, ids))}"
    j = ids.index(parts[1])
    if j == n:
        return f"{ref} refers to the step itself (a cycle): a step can use only earlier steps"
    if j > n:
        return (
            f"{ref} refers to a later step (a forward reference, which makes a cycle): "
            f"move step {parts[1]} before step {ids[n]}, or drop the reference"
        )
    fields = (*KINDS[raw[j]["kind"]].fields, "args") if raw[j].get("kind") in KINDS else ()
    if fields and parts[2] not in fields:
        return (
            f"{ref}: a {raw[j]['kind']} step has no field {parts[2]} (it has {', '.join(fields)})"
        )
    return None
