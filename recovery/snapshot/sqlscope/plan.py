"""The `--for-sql` plan of `snapshot create` and of runbook steps: a SQL file analysed and
estimated, the snapshot specs it calls for, and the analysis as a JSON document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from ...errors import RecoveryError
from .. import Spec, specs_for_sql
from .analysis import analyze
from .estimates import estimate
from .model import Statement


def read_sql_file(path: str) -> str:
    """The text of the SQL file at path; RecoveryError when it cannot be read."""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecoveryError(f"cannot read {path}: {exc}") from None


def describe(stmts: list[Statement], file: str, *, totals: bool = False) -> dict[str, Any]:
    """The analysis as JSON: per statement its line, kind, text, notes, estimates and
    targets. totals (the runbook steps' output): each target's est_rows too, and the
    tables and estimates of the whole file."""
    out: list[dict[str, Any]] = [
        {
            "number": s.number,
            "line": s.line,
            "kind": s.kind,
            "text": s.text,
            "notes": s.notes,
            "est_rows": s.est_rows,
            "est_bytes": s.est_bytes,
            "targets": [
                {
                    "table": f"{t.schema}.{t.table}",
                    "bounded": t.bounded,
                    "reason": t.reason,
                    "columns": t.columns,
                    **({"est_rows": t.est_rows} if totals else {}),
                }
                for t in s.targets
            ],
        }
        for s in stmts
    ]
    if not totals:
        return {"file": file, "statements": out}
    tables = sorted({t["table"] for s in out for t in s["targets"]})
    return {
        "file": file,
        "statements": out,
        "tables": tables,
        "est_rows": sum(s.est_rows or 0 for s in stmts),
        "est_bytes": sum(s.est_bytes or 0 for s in stmts),
    }


def plan_for_sql(
    conn: psycopg.Connection, text: str, source: str, *, totals: bool = False
) -> tuple[list[Statement], list[Spec], dict[str, Any]]:
    """What the SQL text (read from source, a file name) could destroy: its statements
    analysed and estimated, the snapshot specs that save it, and describe()'s document
    (its file: source). Reads only (see analyze() and estimate())."""
    stmts = analyze(conn, text, source=source)
    estimate(conn, stmts)
    return stmts, specs_for_sql(stmts), describe(stmts, source, totals=totals)
