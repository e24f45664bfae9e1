"""The tolerant readers of step results, and the one line on what each step did."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from ...selector import Selector

PLAN_KINDS = ("rollback_plan", "restore_plan")
APPLY_KINDS = ("rollback_apply", "restore")


def iso_time(v: Any) -> str | None:
    if isinstance(v, datetime):
        dt = v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v
        return dt.astimezone(timezone.utc).isoformat()
    return None if v is None else str(v)


def seconds_between(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return round((b - a).total_seconds(), 3)


def as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        return int(v)
    return None


def dict_of(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    tables = result.get("tables")
    if not isinstance(tables, list):
        return []
    return [t for t in tables if isinstance(t, dict) and t.get("table") is not None]


def tags_of(selector: Any) -> list[str]:
    sel = dict_of(selector)
    out: list[str] = []
    for key in ("tags", "tag"):
        v = sel.get(key)
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            out += [str(x) for x in v if x is not None]
    return out


def is_table_step(kind: str, result: dict[str, Any]) -> bool:
    return kind in PLAN_KINDS + APPLY_KINDS or bool(table_rows(result))


def is_plan(kind: str, result: dict[str, Any]) -> bool:
    return kind in PLAN_KINDS or (kind not in APPLY_KINDS and result.get("dry_run") is True)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def sum_of(rows: Iterable[dict[str, Any]], key: str) -> int:
    return sum(as_int(r.get(key)) or 0 for r in rows)


def shorten(text: Any, width: int = 80) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def step_summary(
    kind: str, status: str, result: dict[str, Any], approvals: dict[int, dict[str, Any]]
) -> str:
    """One line on what a step did, from whatever its result holds."""
    tables = table_rows(result)
    if is_table_step(kind, result):
        sel = Selector.from_dict(result.get("selector"))
        where = "" if sel.is_empty() else sel.describe()
        if result.get("snapshot") is not None:
            where = f"snapshot {result['snapshot']}"
        conflicts = as_int(result.get("conflicts"))
        if conflicts is None:
            conflicts = sum_of(tables, "conflicts")
        if is_plan(kind, result):
            parts = [
                f"{k} {sum_of(tables, f)}"
                for k, f in (
                    ("re-insert", "reinsert"),
                    ("restore", "restore"),
                    ("delete", "delete"),
                )
                if any(f in t for t in tables)
            ]
            total = sum(sum_of(tables, f) for f in ("reinsert", "restore", "delete"))
            line = f"plan: {plural(total, 'row')} in {plural(len(tables), 'table')}"
            line += f" ({', '.join(parts)})" if parts else ""
            line += f"; {plural(conflicts, 'conflict')}" if conflicts else ""
        else:
            line = (
                f"inserted {sum_of(tables, 'inserted')}, updated {sum_of(tables, 'updated')}, "
                f"deleted {sum_of(tables, 'deleted')} in {plural(len(tables), 'table')}"
            )
            if conflicts:
                line += f"; {plural(conflicts, 'conflict')}"
                if result.get("on_conflict") == "skip":
                    line += " kept (on-conflict skip)"
                elif result.get("on_conflict"):
                    line += f" (on-conflict {result['on_conflict']})"
            if result.get("status") not in (None, "done"):
                line += f"; {result['status']}"
        return line + (f"; {where}" if where else "")
    req = as_int(result.get("req_id"))
    if kind == "approval" or req is not None:
        a = approvals.get(req) if req is not None else None
        if a is None:
            return f"approval request #{req}" if req is not None else "approval"
        who = [x["by"] for x in a["approved"] if x.get("by")]
        head = f"request #{req}"
        bits = [str(b) for b in (a.get("kind"),) if b]
        if a.get("rows") is not None:
            bits.append(plural(a["rows"], "row"))
        if a.get("tables") is not None:
            bits.append(plural(a["tables"], "table"))
        head += f" ({', '.join(bits)})" if bits else ""
        if who:
            return f"{head}: approved by {', '.join(who)}"
        need = f" ({len(who)} of {a['required']})" if a.get("required") is not None else ""
        return f"{head}: waiting for approval{need}"
    if kind == "sql_check" or "query" in result:
        ok = result.get("ok")
        if ok is None and status in ("done", "failed"):
            ok = status == "done"
        line = "ok" if ok else "FAILED" if ok is False else "check"
        if "actual" in result:
            line += f": got {json.dumps(result['actual'], default=str)}"
        if "expect" in result:
            line += f", expected {json.dumps(result['expect'], default=str)}"
        return line
    if kind == "notify" or "message" in result:
        return f"notified: {shorten(result.get('message', ''), 100)}"
    scalars = [
        f"{k}={v}" for k, v in result.items() if isinstance(v, (str, int, float, bool)) or v is None
    ][:4]
    return shorten(", ".join(scalars), 100)
