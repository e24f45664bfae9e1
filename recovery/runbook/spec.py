"""The runbook file format: YAML loading, validation and parameters.

A runbook is YAML: `name`, `description`, `parameters` (name -> type, default, ...) and
`steps` (ordered; each an `id`, a `kind` from steps.KINDS with its arguments, and an
optional `when`).  String values may hold `${params.NAME}`, `${steps.ID.FIELD}` and
`${run.id}` (values.py resolves them); a `when` is the small expression language of
conditions.py (never eval()'d).  `load()` reports every problem at once, each with
file:line and a fix.  Nothing here touches a database; engine.py runs what this module
accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..capture.prune import parse_duration
from ..errors import RecoveryError
from .conditions import condition_refs, parse_condition
from .definition import Param, Runbook, RunbookInvalid, Step
from .steps import KINDS, STEP_ARGS
from .values import coerce, refs

__all__ = [
    "KINDS",
    "Param",
    "Runbook",
    "RunbookInvalid",
    "Step",
    "bind_params",
    "from_definition",
    "load",
    "loads",
    "param_value",
    "parse_param_args",
]

PARAM_TYPES = ("string", "int", "number", "bool", "duration", "table", "file")
PARAM_KEYS = ("type", "default", "required", "choices", "min", "max", "pattern", "description")
TOP_KEYS = ("name", "description", "parameters", "steps")
STEP_KEYS = ("id", "kind", "when", "description")
_ID = re.compile(r"[a-z][a-z0-9_]*")


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
        for k, wanted in STEP_ARGS.get(kind, {}).items():
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
