"""The plans an undo or a restore submits to approval, and their hash (what gets
approved)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any


def plan_hash(plan: dict[str, Any]) -> str:
    """SHA-256 of the plan's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(plan, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def rollback_plan(
    selector: Mapping[str, Any], on_conflict: str, tables: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], int, int]:
    """The plan an undo submits to approval (its hash is what gets approved), the rows it
    writes and the number of tables it writes to.

    selector is Selector.as_dict(); tables are the undo's TableResults (as dicts, in
    the undo's order).  Rows written: re-insert, restore, delete, and conflicting rows
    that still get cells restored (partial, with --on-conflict skip).
    """
    keys = ("reinsert", "restore", "delete", "partial")
    rows = [
        {"table": t["table"], **{k: int(t[k]) for k in keys}, "conflicts": int(t["conflicts"])}
        for t in tables
    ]
    plan = {
        "kind": "rollback",
        "selector": dict(selector),
        "on_conflict": on_conflict,
        "tables": rows,
    }
    counts = [sum(r[k] for k in keys) for r in rows]
    return plan, sum(counts), sum(1 for n in counts if n)


def restore_plan(
    snapshot: str, store: str, created_at: str, tables: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], int, int]:
    """The plan a restore submits to approval, its rows and tables (as rollback_plan);
    tables are RestoreTables as dicts, with the counts of a dry run."""
    keys = ("reinsert", "restore", "delete")
    rows = [{"table": t["table"], **{k: int(t[k]) for k in keys}} for t in tables]
    plan = {
        "kind": "restore",
        "snapshot": snapshot,
        "store": store,
        "created_at": created_at,
        "tables": rows,
    }
    counts = [sum(r[k] for k in keys) for r in rows]
    return plan, sum(counts), sum(1 for n in counts if n)
