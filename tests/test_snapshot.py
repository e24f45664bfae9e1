"""Snapshots and restore on a real PostgreSQL: both stores, exact end state of every row."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from recovery import snapshot as snap
from recovery.errors import ConflictError, RecoveryError
from recovery.restore import restore

from .conftest import rows

SHOP = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, tier text DEFAULT 'std');
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers,
                     total numeric(10,2) NOT NULL, note text,
                     updated_at timestamptz NOT NULL DEFAULT '2020-01-01');
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.updated_at := '2030-01-01'; RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
INSERT INTO customers SELECT g, 'c' || g, CASE WHEN g % 2 = 0 THEN 'gold' END
  FROM generate_series(1, 20) g;
INSERT INTO orders (customer_id, total, note) SELECT 1 + g % 20, g * 1.5, 'n' || g
  FROM generate_series(1, 100) g;
"""


@pytest.fixture(params=["db", "dir"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "db" if request.param == "db" else str(tmp_path / "store")


def _shop(sql_exec) -> None:  # type: ignore[no-untyped-def]
    sql_exec(SHOP)


def test_restore_puts_back_changed_and_deleted_rows_keeps_the_rest(conn, sql_exec, store) -> None:
    _shop(sql_exec)
    before_orders = rows(conn, "orders")
    before_customers = rows(conn, "customers")
    specs = snap.table_specs(conn, ["orders", "customers"], ["customer_id <= 10", "true"])
    info = snap.create(conn, "pre-42", specs, store=store)
    assert info.rows == 50 + 20
    # The bad deploy, then a legitimate write to a row outside the snapshot.
    sql_exec("UPDATE orders SET total = 0 WHERE customer_id <= 5")
    sql_exec("DELETE FROM orders WHERE customer_id = 7")
    sql_exec("UPDATE customers SET name = 'x' WHERE id = 3")
    sql_exec("UPDATE orders SET note = 'later' WHERE id = 11")  # customer 12: outside WHERE
    sql_exec("INSERT INTO orders (customer_id, total) VALUES (1, 9), (15, 8)")
    later_write = ("later", datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert {r[0]: r for r in rows(conn, "orders")}[11][3:] == later_write
    found = snap.find(conn, "pre-42", store=store)
    plan = restore(conn, found, dry_run=True)
    by = {t.table: t for t in plan.tables}
    assert (by["public.orders"].restore, by["public.orders"].reinsert) == (25, 5)
    assert by["public.orders"].new_rows == 1  # customer 1's new order; customer 15 is outside
    assert (by["public.customers"].restore, by["public.customers"].reinsert) == (1, 0)
    assert rows(conn, "orders")[0][2] == 0  # dry run changed nothing
    done = restore(conn, found)
    assert done.status == "done"
    after = rows(conn, "orders")
    later = {r[0]: r for r in after}[11]  # as the legitimate write (and its trigger) left it
    expected = [r if r[0] != 11 else later for r in before_orders]
    new = [r for r in after if r[0] > 100]
    assert [r for r in after if r[0] <= 100] == expected  # triggers suspended: updated_at kept
    assert [(r[1], r[2]) for r in new] == [(1, 9), (15, 8)]
    assert rows(conn, "customers") == before_customers
    # Run again: nothing left to do.
    again = restore(conn, found, dry_run=True)
    assert all(t.restore == t.reinsert == 0 for t in again.tables)


def test_delete_new_removes_rows_added_since(conn, sql_exec, store) -> None:
    _shop(sql_exec)
    before = rows(conn, "orders")
    snap.create(conn, "s", snap.table_specs(conn, ["orders"], []), store=store)
    snap.create(conn, "w", snap.table_specs(conn, ["orders"], ["customer_id <= 10"]), store=store)
    sql_exec("INSERT INTO orders (customer_id, total) VALUES (1, 9), (15, 8)")
    # Order 11 (customer 12) existed outside the WHERE and moves into it: not new.
    sql_exec("UPDATE orders SET customer_id = 2 WHERE id = 11")
    moved = {r[0]: r for r in rows(conn, "orders")}[11]
    with pytest.raises(RecoveryError, match="--delete-new needs a snapshot of whole tables"):
        restore(conn, snap.find(conn, "w", store=store), delete_new=True)
    plan = restore(conn, snap.find(conn, "w", store=store), dry_run=True)
    assert plan.tables[0].new_rows == 2  # the insert of customer 1 and the moved order 11
    done = restore(conn, snap.find(conn, "s", store=store), delete_new=True)
    assert (done.tables[0].deleted, done.tables[0].updated) == (2, 1)
    assert rows(conn, "orders") == before
    assert moved[1] == 2


def test_restore_into_a_second_database_recreates_the_dropped_table(
    conn, sql_exec, server_url, tmp_path
) -> None:
    sql_exec(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');"
        "CREATE DOMAIN posint AS int CHECK (VALUE > 0);"
        "CREATE TABLE t (id bigserial PRIMARY KEY, m mood, p posint NOT NULL DEFAULT 1,"
        " g int GENERATED ALWAYS AS (p * 2) STORED, u text UNIQUE);"
        "INSERT INTO t (m, p, u) VALUES ('sad', 3, 'a'), (NULL, 4, 'b'), ('happy', 5, NULL)"
    )
    before = rows(conn, "t")
    store = str(tmp_path / "store")
    info = snap.create(conn, "full", snap.table_specs(conn, ["t"], []), store=store)
    other = f"{conn.info.dbname}_second"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{other}"')
    try:
        conninfo = psycopg.conninfo.conninfo_to_dict(server_url)
        conninfo["dbname"] = other
        with psycopg.connect(psycopg.conninfo.make_conninfo(**conninfo)) as c2:
            rep = restore(c2, snap.find(None, "full", store=store))
            assert rep.tables[0].inserted == 3
            assert rows(c2, "t") == before
            c2.execute("INSERT INTO t (m, p, u) VALUES ('ok', 1, 'c')")
            assert c2.execute("SELECT max(id) FROM t").fetchone() == (4,)
            c2.rollback()
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
    assert info.rows == 3


def test_damaged_snapshot_is_named_with_the_damaged_file(conn, sql_exec, tmp_path) -> None:
    _shop(sql_exec)
    store = str(tmp_path / "store")
    snap.create(conn, "d", snap.table_specs(conn, ["orders", "customers"], []), store=store)
    info = snap.find(None, "d", store=store)
    assert snap.verify(None, info).ok
    f = Path(store) / "d" / info.manifest["items"][1]["data"]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ConflictError, match=str(f)):
        snap.verify(None, info)
    with pytest.raises(ConflictError, match="damaged"):
        restore(conn, info)
    # db store: a changed row in the snapshot table
    snap.create(conn, "d", snap.table_specs(conn, ["orders"], []))
    dbinfo = snap.find(conn, "d", store="db")
    sql_exec(f"UPDATE _recovery.{dbinfo.manifest['items'][0]['data']} SET note = 'z' WHERE id = 5")
    with pytest.raises(ConflictError, match="checksum"):
        snap.verify(conn, dbinfo)


def test_bad_input(conn, sql_exec, tmp_path) -> None:
    _shop(sql_exec)
    with pytest.raises(RecoveryError, match="does not parse"):
        snap.table_specs(conn, ["orders"], ["total >"])
    with pytest.raises(RecoveryError, match="not found"):
        snap.table_specs(conn, ["nope"], [])
    with pytest.raises(RecoveryError, match="no snapshot"):
        snap.find(conn, "missing")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() != 0:  # root writes anyway
        with pytest.raises(RecoveryError, match="not writable"):
            snap.create(conn, "x", snap.table_specs(conn, ["orders"], []), store=str(ro))
    (tmp_path / "file").write_text("")
    with pytest.raises(RecoveryError, match="cannot be created"):
        snap.create(
            conn,
            "x",
            snap.table_specs(conn, ["orders"], []),
            store=str(tmp_path / "file" / "store"),
        )
    assert snap.list_snapshots(conn) == []
    store = tmp_path / "s"
    snap.create(conn, "new", snap.table_specs(conn, ["orders"], []), store=str(store))
    m = json.loads((store / "new" / "manifest.json").read_text())
    m["format"] = 99
    (store / "new" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RecoveryError, match="newer"):
        snap.find(None, "new", store=str(store))


MIGRATION = """
-- A risky migration: a backfill with a join, a purge, a dropped column, a truncate.
UPDATE orders o SET total = o.total * 0, note = 'repriced'
  FROM customers c WHERE c.id = o.customer_id AND c.tier = 'gold';
DELETE FROM orders WHERE total > 140;
ALTER TABLE customers DROP COLUMN tier;
TRUNCATE audit;
"""


@pytest.mark.parametrize("where", ["db", "dir"])
def test_for_sql_snapshot_restores_everything_the_migration_destroyed(
    conn, sql_exec, cli, tmp_path, where
) -> None:
    _shop(sql_exec)
    sql_exec(
        "CREATE TABLE audit (id int PRIMARY KEY, what text);"
        "INSERT INTO audit SELECT g, 'a' || g FROM generate_series(1, 7) g;"
        "CREATE TABLE untouched (id int PRIMARY KEY); INSERT INTO untouched VALUES (1)"
    )
    before = {t: rows(conn, t) for t in ("orders", "customers", "audit")}
    mig = tmp_path / "migration.sql"
    mig.write_text(MIGRATION)
    store = ["--store", str(tmp_path / "store")] if where == "dir" else []
    dry = cli("snapshot", "create", "pre", "--for-sql", str(mig), "--dry-run", *store)
    assert dry.exit_code == 0, dry.output
    assert "line 3: UPDATE" in dry.output and "TRUNCATE" in dry.output
    if where == "db":
        assert snap.list_snapshots(conn) == []
    else:
        assert not (tmp_path / "store").exists()  # a dry run writes nothing
    res = cli("snapshot", "create", "pre", "--for-sql", str(mig), "--json", *store)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    saved = {t["table"]: t for t in doc["tables"]}
    # Exactly what the migration could destroy: gold customers' orders and the orders
    # over 140, customers' id + tier, all of audit; nothing of untouched.
    gold = sql_exec(
        "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id"
        " WHERE c.tier = 'gold' OR o.total > 140"
    )[0][0]
    assert saved["public.orders"]["rows"] == gold
    assert saved["public.customers"]["columns"] == ["id", "tier"]
    assert saved["public.customers"]["rows"] == 20 and saved["public.audit"]["rows"] == 7
    assert "public.untouched" not in saved
    sql_exec(MIGRATION)
    sql_exec("INSERT INTO audit VALUES (100, 'after')")  # a legitimate write since
    out = cli("restore", "pre", "--yes", *store)
    assert out.exit_code == 0, out.output
    assert rows(conn, "orders") == before["orders"]
    assert rows(conn, "customers") == before["customers"]  # tier added back, at the end
    assert rows(conn, "audit") == before["audit"] + [(100, "after")]
    assert sql_exec(
        "SELECT column_default FROM information_schema.columns"
        " WHERE table_name = 'customers' AND column_name = 'tier'"
    ) == [("'std'::text",)]


def test_a_damaged_manifest_does_not_hide_the_other_snapshots(conn, sql_exec, cli, tmp_path):
    _shop(sql_exec)
    store = tmp_path / "store"
    for name in ("a", "b"):
        snap.create(conn, name, snap.table_specs(conn, ["customers"], []), store=str(store))
    (store / "a" / "manifest.json").write_text("{not json")
    problems: list[str] = []
    found = snap.list_snapshots(None, store=str(store), problems=problems)
    assert [i.name for i in found] == ["b"] and problems and problems[0].startswith("a:")
    res = cli("snapshot", "list", "--store", str(store), "--json")
    assert res.exit_code == 0
    assert [d["name"] for d in json.loads(res.stdout)] == ["b"]
    assert "warning: not listed: a:" in res.stderr


def test_identity_always_column_is_reported_not_restored_forever(conn, sql_exec) -> None:
    sql_exec(
        "CREATE TABLE t3 (id int PRIMARY KEY, n int GENERATED ALWAYS AS IDENTITY, v text);"
        "INSERT INTO t3 (id, v) VALUES (1, 'a'), (2, 'b')"
    )
    info = snap.create(conn, "t3", snap.table_specs(conn, ["t3"], []))
    sql_exec("UPDATE t3 SET n = DEFAULT, v = 'x' WHERE id = 1; DELETE FROM t3 WHERE id = 2")
    done = restore(conn, snap.find(conn, info.name))
    t = done.tables[0]
    assert (t.updated, t.inserted) == (1, 1)
    assert any("GENERATED ALWAYS AS IDENTITY" in n for n in t.notes)
    assert rows(conn, "t3") == [(1, 3, "a"), (2, 2, "b")]  # n of row 1 stays 3; row 2 back
    again = restore(conn, snap.find(conn, info.name), dry_run=True)
    assert (again.tables[0].restore, again.tables[0].reinsert) == (0, 0)
