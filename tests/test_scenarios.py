"""Undo scenarios as data: one folder per case in tests/scenarios/, checked by one runner.

Each case holds `setup.sql` (tables and rows, before capture), `bad.sql` (the bad
change, run under `recovery.tag = 'bad'`; it may hold several transactions),
optionally `legit.sql` (untagged writes made after it) and `expected.yaml`:

    capture: [t]                   tables to capture after setup
    on_conflict: skip              fail (default), skip or overwrite
    after_bad: {t: [rows]}         optional: the state right after the bad change
    expect:
      status: done                 or conflict (ConflictError, nothing changed)
      tables: {t: [rows]}          every row, as text, ordered by its first column
      conflicts: N                 optional
      counts: {public.t: [reinsert, restore, delete, already, conflicts]}
      written: {public.t: [inserted, updated, deleted]}
      partial: {public.t: N}

The runner asserts the exact end state of every table, then runs the same undo again
and asserts that it writes nothing and changes nothing; every case runs under both
capture sources (trigger and WAL).  A new case is a new folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from recovery import ConflictError, Selector, enable_capture, rollback

CASES = Path(__file__).resolve().parent / "scenarios"
BAD = Selector(tags=("bad",))


def _rows(conn: psycopg.Connection, table: str) -> list[str]:
    conn.rollback()
    ident = psycopg.sql.Identifier(*table.split("."))
    out = [
        r[0]
        for r in conn.execute(
            psycopg.sql.SQL("SELECT x::text, x.* FROM {} x ORDER BY 2, 1").format(ident)
        )
    ]
    conn.rollback()
    return out


def _state(conn: psycopg.Connection, tables: dict[str, Any]) -> dict[str, list[str]]:
    return {t: _rows(conn, t) for t in tables}


@pytest.mark.parametrize("source", ["trigger", "wal"])
@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_scenario(case, source, conn, sql_exec):
    d = CASES / case
    spec = yaml.safe_load((d / "expected.yaml").read_text())
    expect = spec["expect"]
    sql_exec((d / "setup.sql").read_text())
    enable_capture(conn, spec["capture"], source=source)
    sql_exec("SET recovery.tag = 'bad';\n" + (d / "bad.sql").read_text())
    if "after_bad" in spec:
        assert _state(conn, spec["after_bad"]) == spec["after_bad"]
    if (d / "legit.sql").exists():
        sql_exec((d / "legit.sql").read_text())
    on_conflict = spec.get("on_conflict", "fail")
    before = _state(conn, expect["tables"])
    if expect["status"] == "conflict":
        with pytest.raises(ConflictError) as exc:
            rollback(conn, BAD, on_conflict=on_conflict)
        report = exc.value.report
        assert _state(conn, expect["tables"]) == before == expect["tables"]
    else:
        report = rollback(conn, BAD, on_conflict=on_conflict)
        assert report.status == "done"
        assert _state(conn, expect["tables"]) == expect["tables"]
    if "conflicts" in expect:
        assert report.conflicts == expect["conflicts"]
    by_table = {t.table: t for t in report.tables}
    for table, want in expect.get("counts", {}).items():
        t = by_table[table]
        assert [t.reinsert, t.restore, t.delete, t.already, t.conflicts] == want
    for table, want in expect.get("written", {}).items():
        t = by_table[table]
        assert [t.inserted, t.updated, t.deleted] == want
    for table, want in expect.get("partial", {}).items():
        assert by_table[table].partial == want
    if expect["status"] == "conflict":
        return
    # The same undo again changes nothing.
    again = rollback(conn, BAD, on_conflict="skip" if on_conflict == "fail" else on_conflict)
    assert [(t.inserted, t.updated, t.deleted) for t in again.tables] == [
        (0, 0, 0) for _ in again.tables
    ]
    assert _state(conn, expect["tables"]) == expect["tables"]
