"""The step kinds: ONE table of StepKind entries, read by validation (spec.py: arguments
and result fields) and by the engine (the runner, --dry-run, the summary line)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import RecoveryError
from . import runners as r
from .context import Execution
from .definition import Step
from .values import REF, coerce, resolve

Runner = Callable[[Execution, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class StepKind:
    """A step kind: its name, its arguments, the result fields later steps may use, the
    function that runs it, the line that says what it did, and whether it runs in
    --dry-run (`dry`: it writes nothing, or it checks the dry run itself)."""

    name: str
    args: dict[str, tuple[str, bool]]  # argument -> (type, required)
    fields: tuple[str, ...]
    dry: bool
    run: Runner
    summary: Callable[[dict[str, Any]], str]


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


def _applied(res: dict[str, Any]) -> str:
    return (
        f"operation {res['op_id']}: {res['rows']} row(s) changed in {res['table_count']} table(s)"
    )


KINDS: dict[str, StepKind] = {
    k.name: k
    for k in (
        StepKind(
            "capture_on",
            {"tables": ("list", True), "source": ("str", False)},
            ("tables",),
            False,
            r.run_capture_on,
            lambda res: "capturing " + ", ".join(res["tables"]),
        ),
        StepKind(
            "capture_off",
            {"tables": ("list", True)},
            ("tables",),
            False,
            r.run_capture_off,
            lambda res: "stopped capturing " + ", ".join(res["tables"]),
        ),
        StepKind(
            "mark",
            {"name": ("str", True), "note": ("str", False)},
            ("name", "at", "created_by", "note"),
            False,
            r.run_mark,
            lambda res: f"mark {res['name']} at {res['at']}",
        ),
        StepKind(
            "analyze_sql",
            {"file": ("str", True)},
            ("file", "statements", "tables", "est_rows", "est_bytes"),
            True,
            r.run_analyze_sql,
            lambda res: (
                f"{len(res['statements'])} statement(s) could destroy about "
                f"{res['est_rows']} row(s) of {', '.join(res['tables'])}"
            ),
        ),
        StepKind(
            "snapshot",
            {
                "name": ("str", True),
                "tables": ("list", False),
                "where": ("strs", False),
                "for_sql": ("str", False),
                "store": ("str", False),
            },
            ("name", "store", "created_at", "created_by", "tables", "rows", "bytes"),
            False,
            r.run_snapshot,
            lambda res: f"snapshot {res['name']}: {res['rows']} row(s) in {res['store']}",
        ),
        StepKind(
            "snapshot_verify",
            {"name": ("str", True), "store": ("str", False)},
            ("name", "store", "ok", "items"),
            True,
            r.run_snapshot_verify,
            lambda res: f"snapshot {res['name']} is intact",
        ),
        StepKind(
            "changes",
            dict(SELECTOR),
            (
                "selector",
                "statements",
                "rows",
                "first",
                "last",
                "by_table",
                "by_tag",
                "by_transaction",
            ),
            True,
            r.run_changes,
            lambda res: f"{res['rows']} row change(s) in {res['statements']} statement(s)",
        ),
        StepKind(
            "diff",
            {**SELECTOR, "limit": ("int", False)},
            ("count", "changes"),
            True,
            r.run_diff,
            lambda res: f"{res['count']} changed row(s) shown",
        ),
        StepKind(
            "rollback_plan",
            {**SELECTOR, "on_conflict": ("str", False)},
            (*_PLANNED, "selector", "on_conflict"),
            True,
            r.run_rollback_plan,
            lambda res: (
                f"{res['rows']} row(s) of {res['table_count']} table(s) to undo, "
                f"{res['conflicts']} conflict(s)"
            ),
        ),
        StepKind(
            "rollback_apply",
            {
                **SELECTOR,
                "on_conflict": ("str", False),
                "batch_size": ("int", False),
                "lock_timeout": ("str", False),
                "approval": ("str", False),
            },
            (*_PLANNED, "op_id", "selector", "on_conflict", "undo_tag", "batches", "approval"),
            False,
            r.run_rollback_apply,
            _applied,
        ),
        StepKind(
            "restore_plan",
            {
                "snapshot": ("str", True),
                "store": ("str", False),
                "tables": ("list", False),
                "delete_new": ("bool", False),
            },
            (*_PLANNED, "snapshot", "store", "created_at"),
            True,
            r.run_restore_plan,
            lambda res: f"{res['rows']} row(s) of {res['table_count']} table(s) to restore",
        ),
        StepKind(
            "restore",
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
            r.run_restore,
            _applied,
        ),
        StepKind(
            "sql_check",
            {"query": ("str", True), "expect": ("expect", True)},
            ("query", "expect", "actual", "rows", "ok"),
            True,
            r.run_sql_check,
            lambda res: f"ok: {json.dumps(res['actual'], default=str)}",
        ),
        StepKind(
            "approval",
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
            r.run_approval,
            lambda res: (
                "not needed"
                if not res["needed"]
                else f"request {res['req_id']}: {res['status']}"
                if res["req_id"]
                else "needed (not requested: dry run)"
            ),
        ),
        StepKind(
            "pause",
            {"message": ("str", True)},
            ("message",),
            True,
            r.run_pause,
            lambda res: (
                f"resumed after: {res['message']}" if res.get("resumed") else res["message"]
            ),
        ),
        StepKind(
            "notify",
            {"message": ("str", True), "webhook": ("str", False)},
            ("message", "url", "sent", "warning"),
            True,
            r.run_notify,
            lambda res: (
                (f"sent: {res['message']}" if res["sent"] else res["message"])
                + (f" (warning: {res['warning']})" if res.get("warning") else "")
            ),
        ),
    )
}
# Arguments that name an earlier step, and the kinds that step may be.
STEP_ARGS: dict[str, dict[str, tuple[str, ...]]] = {
    "approval": {"for": ("rollback_plan", "restore_plan")},
    "rollback_apply": {"approval": ("approval",)},
    "restore": {"approval": ("approval",)},
}


def summary(kind: str, result: dict[str, Any]) -> str:
    """One line saying what a step did."""
    return KINDS[kind].summary(result)


def step_args(
    step: Step,
    lookup: Callable[[str], Any],
    sql_literal: Callable[[Any], str],
    partial: bool = False,
) -> dict[str, Any]:
    """A step's arguments, references resolved and types checked; absent when null."""
    out = {}
    for name, raw in step.args.items():
        if name == "query" and isinstance(raw, str) and not REF.fullmatch(raw.strip()):
            # Values go into a query as SQL literals, never as SQL text (a query that is
            # one reference, e.g. ${params.check_query}, is that value's text).
            value: Any = REF.sub(lambda m: sql_literal(lookup(m.group(1).strip())), raw)
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
