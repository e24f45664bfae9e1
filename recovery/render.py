"""Plain-text renderings of library results for the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .capture import CaptureState
from .journal import ChangesSummary, RowChange
from .marks import Mark
from .operations import Operation
from .undo import RollbackReport


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def capture_status(states: Sequence[CaptureState]) -> str:
    if not states:
        return "no table is captured: `recovery capture enable TABLE`"
    out = table(["table", "state", "key", "statements", "rows", "journal"],
                [[s.table, s.state, ",".join(s.key) + ("" if s.key_source == "primary key"
                                                      else " (--key)"),
                  s.statements, s.rows, _size(s.journal_bytes)] for s in states])
    notes = [f"{s.table}: {p}" for s in states for p in s.problems]
    return out + ("\n\n" + "\n".join(notes) if notes else "")


def changes(c: ChangesSummary) -> str:
    if not c.statements:
        return "no captured change matches"
    parts = [f"{c.rows} row change(s) in {c.statements} statement(s), {c.first} .. {c.last}", ""]
    parts.append(table(["table", "operation", "statements", "rows"],
                       [[r["table"], r["operation"], r["statements"], r["rows"]]
                        for r in c.by_table]))
    parts.append("")
    parts.append(table(["tag", "statements", "rows", "first", "last"],
                       [[r["tag"] or "(untagged)", r["statements"], r["rows"], r["first"],
                         r["last"]] for r in c.by_tag]))
    parts.append("")
    parts.append(table(["txid", "tag", "user", "app", "statements", "rows", "first"],
                       [[r["txid"], r["tag"] or "", r["user"], r["app"], r["statements"],
                         r["rows"], r["first"]] for r in c.by_transaction]))
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
        rows = [[t.table, t.changes, t.inserted, t.updated, t.deleted, t.already, t.conflicts]
                for t in r.tables]
        lines.append(table(["table", "changes", "re-inserted", "restored", "deleted",
                            "already", "conflicts"], rows))
    else:
        rows = [[t.table, t.changes, t.reinsert, t.restore, t.delete, t.already, t.conflicts]
                for t in r.tables]
        lines.append(table(["table", "changes", "re-insert", "restore", "delete", "already",
                            "conflicts"], rows))
    for t in r.tables:
        for ex in t.conflict_examples:
            key = ", ".join(f"{k}={v}" for k, v in ex["key"].items())
            lines.append(f"conflict {t.table} [{key}] {ex['action']}: {', '.join(ex['columns'])}")
            for col, v in ex["values"].items():
                lines.append(f"    {col}: restore to {_short(v['restore_to'])}, bad change left "
                             f"{_short(v['left_by_change'])}, now {_short(v['now'])}")
        if t.conflicts > len(t.conflict_examples):
            lines.append(f"... {t.conflicts - len(t.conflict_examples)} more conflict(s) in "
                         f"{t.table}")
        if t.partial and r.on_conflict != "overwrite":
            lines.append(f"{t.table}: {t.partial} conflicting row(s) still get their other "
                         "cells restored with --on-conflict skip")
    if r.status == "done":
        lines.append(f"took {r.seconds:.2f} s; undo this undo with: recovery rollback --tag "
                     f"{r.undo_tag}")
    return "\n".join(lines)


def operations(ops: Sequence[Operation]) -> str:
    if not ops:
        return "no operation recorded yet"
    return table(["op", "kind", "status", "by", "started", "finished", "tag", "error"],
                 [[o.op_id, o.kind, o.status, o.requested_by, o.started_at[:19],
                   (o.finished_at or "")[:19], o.tag, o.error] for o in ops])


def marks(ms: Sequence[Mark]) -> str:
    if not ms:
        return "no mark yet: `recovery mark NAME`"
    return table(["mark", "at", "by", "note"], [[m.name, m.at, m.created_by, m.note] for m in ms])
