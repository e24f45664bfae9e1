"""Plain-text renderings of library results for the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..approval import Request
from ..capture.journal import ChangesSummary, RowChange
from ..capture.triggers import CaptureState
from ..capture.wal import SlotState
from ..marks import Mark
from ..operations import Operation
from ..restore import RestoreReport
from ..selector import Selector
from ..snapshot.stores import VerifyResult
from ..text import size, table
from ..undo.engine import RollbackReport


def capture_status(states: Sequence[CaptureState]) -> str:
    if not states:
        return "no table is captured: `recovery capture enable TABLE`"
    out = table(
        ["table", "state", "source", "key", "statements", "rows", "journal"],
        [
            [
                s.table,
                s.state,
                s.source,
                ",".join(s.key) + ("" if s.key_source == "primary key" else " (--key)"),
                s.statements,
                s.rows,
                size(s.journal_bytes),
            ]
            for s in states
        ],
    )
    notes = [f"{s.table}: {p}" for s in states for p in s.problems]
    return out + ("\n\n" + "\n".join(notes) if notes else "")


def slot_state(slot: SlotState) -> str:
    if slot.exists and not slot.in_use:
        return (
            f"\nWAL capture slot {slot.name} holds WAL but no table is captured from the WAL "
            "any more: `recovery capture disable --all` drops it"
        )
    if not slot.exists:
        return f"\nWAL capture slot {slot.name} is missing (see the notes above)"
    drained = ""
    if slot.drained_lsn:
        drained = (
            f"; the journal is complete up to {slot.drained_lsn} (a commit of "
            f"{slot.drained_at}): anything undrained is newer"
        )
    return (
        f"\nWAL capture slot {slot.name}: {size(slot.lag_bytes or 0)} of WAL behind"
        f"{drained} ({slot.wal_status})"
    )


def changes(c: ChangesSummary) -> str:
    if not c.statements:
        return "no captured change matches"
    parts = [f"{c.rows} row change(s) in {c.statements} statement(s), {c.first} .. {c.last}", ""]
    parts.append(
        table(
            ["table", "operation", "statements", "rows"],
            [[r["table"], r["operation"], r["statements"], r["rows"]] for r in c.by_table],
        )
    )
    parts.append("")
    parts.append(
        table(
            ["tag", "statements", "rows", "first", "last"],
            [
                [r["tag"] or "(untagged)", r["statements"], r["rows"], r["first"], r["last"]]
                for r in c.by_tag
            ],
        )
    )
    parts.append("")
    parts.append(
        table(
            ["txid", "tag", "user", "app", "statements", "rows", "first"],
            [
                [
                    r["txid"],
                    r["tag"] or "",
                    r["user"],
                    r["app"],
                    r["statements"],
                    r["rows"],
                    r["first"],
                ]
                for r in c.by_transaction
            ],
        )
    )
    return "\n".join(parts)


def _short(v: Any, n: int = 40) -> str:
    s = "NULL" if v is None else str(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def diff(rows: Sequence[RowChange]) -> str:
    if not rows:
        return "no captured change matches"
    out = []
    for r in rows:
        key = ", ".join(f"{k}={v}" for k, v in r.key.items())
        out.append(f"{r.table} {r.operation} [{key}] txid {r.txid} {r.tag or '(untagged)'} {r.at}")
        for col, (before, after) in r.columns.items():
            out.append(f"    {col}: {_short(before)} -> {_short(after)}")
    return "\n".join(out)


def rollback(r: RollbackReport) -> str:
    head = {
        "dry-run": "plan (dry run, nothing changed)",
        "planned": "plan",
        "done": f"undo operation {r.op_id} done",
        "refused": f"undo operation {r.op_id} refused",
        "stopped": f"undo operation {r.op_id} stopped",
        "applying": f"undo operation {r.op_id} applying",
        "failed": f"undo operation {r.op_id} failed",
    }.get(r.status, r.status)
    lines = [f"{head}: {', '.join(f'{k}={v}' for k, v in r.selector.items())}"]
    if r.status in ("done",):
        rows = [
            [t.table, t.changes, t.inserted, t.updated, t.deleted, t.already, t.conflicts]
            for t in r.tables
        ]
        lines.append(
            table(
                ["table", "changes", "re-inserted", "restored", "deleted", "already", "conflicts"],
                rows,
            )
        )
    else:
        rows = [
            [t.table, t.changes, t.reinsert, t.restore, t.delete, t.already, t.conflicts]
            for t in r.tables
        ]
        lines.append(
            table(
                ["table", "changes", "re-insert", "restore", "delete", "already", "conflicts"], rows
            )
        )
    for t in r.tables:
        for ex in t.conflict_examples:
            key = ", ".join(f"{k}={v}" for k, v in ex["key"].items())
            lines.append(f"conflict {t.table} [{key}] {ex['action']}: {', '.join(ex['columns'])}")
            for col, v in ex["values"].items():
                lines.append(
                    f"    {col}: restore to {_short(v['restore_to'])}, bad change left "
                    f"{_short(v['left_by_change'])}, now {_short(v['now'])}"
                )
        if t.conflicts > len(t.conflict_examples):
            lines.append(
                f"... {t.conflicts - len(t.conflict_examples)} more conflict(s) in {t.table}"
            )
        if t.partial and r.on_conflict != "overwrite":
            lines.append(
                f"{t.table}: {t.partial} conflicting row(s) still get their other "
                "cells restored with --on-conflict skip"
            )
    if r.status == "done":
        lines.append(
            f"took {r.seconds:.2f} s; undo this undo with: recovery rollback --tag {r.undo_tag}"
        )
    return "\n".join(lines)


def operations(ops: Sequence[Operation]) -> str:
    if not ops:
        return "no operation recorded yet"
    return table(
        ["op", "kind", "status", "by", "started", "finished", "tag", "error"],
        [
            [
                o.op_id,
                o.kind,
                f"{o.status}, interrupted" if o.interrupted else o.status,
                o.requested_by,
                o.started_at[:19],
                (o.finished_at or "")[:19],
                o.tag,
                o.error,
            ]
            for o in ops
        ],
    )


def marks(ms: Sequence[Mark]) -> str:
    if not ms:
        return "no mark yet: `recovery mark NAME`"
    return table(["mark", "at", "by", "note"], [[m.name, m.at, m.created_by, m.note] for m in ms])


def any_report(report: Any) -> str:
    """The text of a report attached to a refusal (undo, restore or verification)."""

    if isinstance(report, RestoreReport):
        return restore(report)
    if isinstance(report, VerifyResult):
        return table(
            ["table", "data", "rows", "state"],
            [
                [i["table"], i["data"], i["rows"], "ok" if i["ok"] else i["problem"]]
                for i in report.items
            ],
        )
    return rollback(report)


def blast_radius(stmts: Sequence[Any]) -> str:
    """Per statement of a migration: what it could destroy, estimated rows and bytes."""
    lines = []
    for s in stmts:
        est = "" if s.est_rows is None else f" ~{s.est_rows:,} rows, ~{size(s.est_bytes or 0)}"
        first = " ".join(s.text.split())
        lines.append(f"{s.number}. line {s.line}: {s.kind}{est}: {_short(first, 70)}")
        for t in s.targets:
            cols = f" columns {', '.join(t.columns)}" if t.columns else ""
            bound = "" if t.bounded else " (not bounded: whole table)"
            lines.append(f"    {t.schema}.{t.table}{cols}: {t.reason}{bound}")
        for n in s.notes:
            lines.append(f"    note: {n}")
    return "\n".join(lines)


def snapshot(info: Any, detail: bool = False) -> str:
    lines = [
        f"snapshot {info.name} ({info.store}), {info.created_at} by {info.created_by}: "
        f"{info.rows:,} rows, {size(info.bytes)}"
    ]
    lines.append(
        table(
            ["table", "rows", "size", "columns", "where"],
            [
                [
                    t["table"],
                    t["rows"],
                    size(t["bytes"]),
                    "all" if t["columns"] is None else ", ".join(t["columns"]),
                    _short(
                        t["where"]
                        or (f"{t['parts']} statement WHERE(s)" if t["parts"] else "whole table"),
                        50,
                    ),
                ]
                for t in info.tables
            ],
        )
    )
    if detail:
        m = info.manifest
        lines.append(
            f"database {m.get('database')}, PostgreSQL {m.get('server_version')}, "
            f"format {m.get('format')}"
        )
        for item in m["items"]:
            lines.append(
                f"{item['schema']}.{item['table']}: key {', '.join(item['key'])}; "
                f"data {item['data']}" + (f", sha256 {item['sha256']}" if "sha256" in item else "")
            )
            for p in item.get("parts", []):
                lines.append(f"    {p['reason']}" + ("" if p["bounded"] else " (not bounded)"))
        src = m.get("source", {}).get("for_sql")
        if src:
            lines.append(f"from {src['file']}: {len(src['statements'])} statement(s)")
    else:
        lines.append(
            f"restore with: recovery restore {info.name}"
            + ("" if info.store == "db" else f" --store {info.store}")
        )
    return "\n".join(lines)


def snapshot_list(infos: Sequence[Any]) -> str:
    if not infos:
        return "no snapshot yet: `recovery snapshot create NAME --table T`"
    return table(
        ["snapshot", "store", "created", "by", "tables", "rows", "size"],
        [
            [
                i.name,
                i.store,
                i.created_at[:19],
                i.created_by,
                ", ".join(t["table"] for t in i.tables),
                i.rows,
                size(i.bytes),
            ]
            for i in infos
        ],
    )


def restore(r: Any) -> str:
    head = {
        "dry-run": "restore plan (dry run, nothing changed)",
        "planned": "restore plan",
        "done": f"restore operation {r.op_id} done" if r.op_id else "restore done",
        "failed": "restore failed",
    }.get(r.status, r.status)
    lines = [f"{head}: snapshot {r.snapshot} ({r.store})"]
    done = r.status == "done"
    lines.append(
        table(
            [
                "table",
                "saved",
                "re-inserted" if done else "re-insert",
                "restored" if done else "restore",
                "deleted" if done else "delete",
                "unchanged",
                "new since",
                "conflicts",
            ],
            [
                [
                    t.table,
                    t.saved,
                    t.inserted if done else t.reinsert,
                    t.updated if done else t.restore,
                    t.deleted if done else t.delete,
                    t.already,
                    "?" if t.new_rows is None else t.new_rows,
                    t.conflicts,
                ]
                for t in r.tables
            ],
        )
    )
    for t in r.tables:
        for n in t.notes:
            lines.append(f"{t.table}: {n}")
        if t.new_rows and not t.delete and not t.deleted:
            lines.append(
                f"{t.table}: {t.new_rows} row(s) added since the snapshot are kept "
                "(--delete-new removes them)"
            )
    if done:
        lines.append(
            f"took {r.seconds:.2f} s; undo this restore with: recovery rollback --tag {r.tag}"
        )
    return "\n".join(lines)


# -- approval requests ----------------------------------------------------------

_COLUMNS = ("table", "reinsert", "restore", "delete", "partial", "conflicts")


def _selector_text(value: Any) -> str:
    """A plan's selector as the options that give it (--tag bad --table t)."""
    try:
        return Selector(
            **{
                k: tuple(v) if isinstance(v, list) else v  # type: ignore[arg-type]
                for k, v in value.items()
            }
        ).describe()
    except (TypeError, AttributeError):
        return str(value)


def _plan_lines(plan: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in plan.items():
        if key in ("kind", "tables"):
            continue
        if key == "selector":
            value = _selector_text(value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "(none)"
        lines.append(f"  {key}: {value}")
    tabs = plan.get("tables") or []
    if tabs and isinstance(tabs[0], dict):
        headers = [c for c in _COLUMNS if c in tabs[0]] + sorted(
            c for c in tabs[0] if c not in _COLUMNS
        )
        lines += [
            "  " + line
            for line in table(headers, [[t.get(h) for h in headers] for t in tabs]).splitlines()
        ]
    return lines


def approval_request(req: Request) -> str:
    """A request as an approver sees it before approving: who, when, what, the plan."""
    approvers = (
        ", ".join(f"{a['approved_by']} at {a['approved_at'][:19]}" for a in req.approvals)
        or "none yet"
    )
    lines = [
        f"approval request {req.req_id}: {req.kind}, {req.status}",
        f"requested by {req.requested_by} at {req.requested_at[:19]}: {req.rows} rows in "
        f"{req.tables} tables",
        f"needs {req.required} approval(s) by database users other than {req.requested_by}; "
        f"approvals: {approvers}",
    ]
    if req.executed_by:
        lines.append(f"{req.status} by {req.executed_by} at {(req.executed_at or '')[:19]}")
    lines.append("plan:")
    lines += _plan_lines(req.plan)
    lines.append(f"plan sha256 {req.plan_hash}")
    return "\n".join(lines)


def approval_requests(reqs: Sequence[Request]) -> str:
    if not reqs:
        return "no open approval request"

    def what(r: Request) -> str:
        p = r.plan
        if "selector" in p:
            return _selector_text(p["selector"])
        if "snapshot" in p:
            return f"snapshot {p['snapshot']}"
        return ""

    return table(
        ["request", "kind", "status", "requested by", "at", "rows", "tables", "approvals", "what"],
        [
            [
                r.req_id,
                r.kind,
                r.status,
                r.requested_by,
                r.requested_at[:19],
                r.rows,
                r.tables,
                f"{len(r.approved_by)}/{r.required}",
                what(r),
            ]
            for r in reqs
        ],
    )
