"""A bad deploy on a real schema (Chinook): undone, every legitimate write kept."""

from __future__ import annotations

from pathlib import Path

import psycopg

DATA = Path(__file__).parent / "data" / "chinook.sql"
TABLES = {
    "album": "album_id",
    "artist": "artist_id",
    "customer": "customer_id",
    "employee": "employee_id",
    "genre": "genre_id",
    "invoice": "invoice_id",
    "invoice_line": "invoice_line_id",
    "media_type": "media_type_id",
    "playlist": "playlist_id",
    "playlist_track": "playlist_id, track_id",
    "track": "track_id",
}

BAD = """
SET recovery.tag = 'deploy-7';
BEGIN;
UPDATE track SET unit_price = unit_price * 10 WHERE genre_id IN (1, 2);
DELETE FROM invoice_line WHERE invoice_id IN (SELECT invoice_id FROM invoice WHERE customer_id = 5);
DELETE FROM invoice WHERE customer_id = 5;
COMMIT;
DELETE FROM playlist_track WHERE playlist_id = 8;
UPDATE employee SET reports_to = NULL WHERE reports_to = 2;
INSERT INTO genre (genre_id, name) VALUES (26, 'Misfiled');
UPDATE track SET genre_id = 26 WHERE track_id <= 10;
"""

LEGIT = """
UPDATE track SET name = name || ' (Remastered)' WHERE track_id = 1;
INSERT INTO invoice (invoice_id, customer_id, invoice_date, billing_country, total)
    VALUES (1000, 6, '2026-11-28', 'Czech Republic', 1.98);
INSERT INTO invoice_line (invoice_line_id, invoice_id, track_id, unit_price, quantity)
    VALUES (5000, 1000, 3, 0.99, 1), (5001, 1000, 4, 0.99, 1);
UPDATE customer SET email = 'new-address@example.com' WHERE customer_id = 5;
"""


def _load(url: str) -> None:
    text = DATA.read_text()
    text = text[text.index("\\c chinook;") + len("\\c chinook;") :]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(text)


def _state(url: str) -> dict[str, dict[str, str]]:
    out = {}
    with psycopg.connect(url) as c:
        for t, key in TABLES.items():
            rows = c.execute(f"SELECT concat_ws(',', {key}), x::text FROM {t} x").fetchall()  # noqa: S608
            out[t] = dict(rows)
    return out


def test_chinook_bad_deploy_undone(db_url, cli, sql_exec):
    _load(db_url)
    res = cli("capture", "enable", "--all")
    assert res.exit_code == 0, res.output
    assert len(res.output.splitlines()) == len(TABLES)
    before = _state(db_url)
    track1_before = sql_exec("SELECT to_jsonb(t) FROM track t WHERE track_id = 1")[0][0]
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(BAD)
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(LEGIT)
    legit = _state(db_url)
    # The undo writes to 6 tables, more than the default approval threshold (5); this
    # test is about the undo, not the approval (tests/test_approval.py).
    sql_exec("UPDATE _recovery.meta SET value = '20' WHERE key = 'approval_tables'")

    res = cli("rollback", "--tag", "deploy-7", "--yes", "--json")
    assert res.exit_code == 0, res.output
    after = _state(db_url)

    expected = {t: dict(rows) for t, rows in before.items()}
    # The legitimate writes stay: a new invoice with its lines, a customer's e-mail,
    # and a track's new name (a row whose price and genre the deploy also changed).
    expected["invoice"]["1000"] = legit["invoice"]["1000"]
    expected["invoice_line"]["5000"] = legit["invoice_line"]["5000"]
    expected["invoice_line"]["5001"] = legit["invoice_line"]["5001"]
    expected["customer"]["5"] = legit["customer"]["5"]
    del expected["track"]["1"]
    track1 = after["track"].pop("1")
    for t in TABLES:
        assert after[t] == expected[t], t
    # Track 1: the deploy's price and genre are undone, the new name is kept.
    track1_now = sql_exec("SELECT to_jsonb(t) FROM track t WHERE track_id = 1")[0][0]
    assert track1_now == {**track1_before, "name": track1_before["name"] + " (Remastered)"}
    assert track1 != before["track"]["1"]
    after["track"]["1"] = track1
    assert "26" not in after["genre"]

    # Running the same undo again changes nothing.
    res = cli("rollback", "--tag", "deploy-7", "--yes", "--json")
    assert res.exit_code == 0, res.output
    assert _state(db_url) == after
    assert sql_exec("SELECT count(*) FROM _recovery.operations WHERE status = 'done'") == [(2,)]
