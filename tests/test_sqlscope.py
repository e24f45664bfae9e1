"""sqlscope: what each statement of a migration file could destroy.

Every row target is checked against reality: the keys its WHERE selects before the file
runs are compared with the keys of the rows the file really changes or removes (the file
is run in a transaction, diffed and rolled back).
"""

from __future__ import annotations

import re

import pglast
import psycopg
import pytest
from psycopg import sql

from recovery import sqlscope
from recovery.errors import RecoveryError
from recovery.snapshot.sqlscope import Statement, Target

SCHEMA = """
CREATE TYPE mood AS ENUM ('happy', 'sad', 'meh');
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL,
    region text NOT NULL, mood mood, CONSTRAINT customers_email_key UNIQUE (email));
CREATE TABLE orders (id int PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers ON DELETE CASCADE,
    status text NOT NULL, total numeric(10, 2) NOT NULL, note text);
CREATE TABLE order_items (id int PRIMARY KEY,
    order_id int NOT NULL REFERENCES orders ON DELETE CASCADE ON UPDATE CASCADE,
    sku text NOT NULL, qty int NOT NULL);
CREATE SCHEMA "Mixed";
CREATE TABLE "Mixed"."T" ("Id" int PRIMARY KEY, "Val" text);
CREATE TABLE events (id int NOT NULL, at date NOT NULL, kind text, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE staging (id int, name text, email text);
CREATE VIEW paid AS SELECT * FROM orders WHERE status = 'paid';
INSERT INTO customers SELECT i, 'c' || i, 'c' || i || '@x.org',
    CASE WHEN i % 3 = 0 THEN 'eu' ELSE 'us' END, (ARRAY['happy', 'sad', 'meh'])[1 + i % 3]::mood
    FROM generate_series(1, 60) i;
INSERT INTO orders SELECT i, 1 + i % 60, CASE WHEN i % 5 = 0 THEN 'cancelled' ELSE 'paid' END,
    i * 1.5, NULL FROM generate_series(1, 300) i;
INSERT INTO order_items SELECT i, 1 + i % 300, 'sku' || (i % 7), 1 + i % 4
    FROM generate_series(1, 900) i;
INSERT INTO "Mixed"."T" SELECT i, 'v' || i FROM generate_series(1, 20) i;
INSERT INTO events SELECT i, DATE '2024-06-01' + i, 'k' || (i % 3) FROM generate_series(1, 400) i;
INSERT INTO staging VALUES (1, 'one', 'c1@x.org'), (5000, 'new', 'new@x.org'),
    (7, 'seven', 'c8@x.org');
ANALYZE;
"""

# table -> key expression (unique over the table)
KEYS = {
    "customers": "id",
    "orders": "id",
    "order_items": "id",
    '"Mixed"."T"': '"Id"',
    "events": "id",
    "events_2025": "id",
}


@pytest.fixture
def shop(conn: psycopg.Connection, sql_exec) -> psycopg.Connection:  # type: ignore[no-untyped-def]
    sql_exec(SCHEMA)
    conn.rollback()
    return conn


def _run(conn: psycopg.Connection, text: str) -> None:
    for raw in pglast.parse_sql(text):
        end = raw.stmt_location + raw.stmt_len if raw.stmt_len else len(text)
        conn.execute(text[raw.stmt_location : end])  # type: ignore[arg-type]


def changed(conn: psycopg.Connection, text: str) -> dict[str, set]:  # type: ignore[type-arg]
    """Per table of KEYS: the keys of the rows the file updates or deletes (rolled back)."""

    def snap() -> dict[str, dict]:  # type: ignore[type-arg]
        out = {}
        for t, k in KEYS.items():
            try:
                with conn.transaction():
                    out[t] = dict(conn.execute(f"SELECT {k}, x::text FROM {t} x").fetchall())
            except psycopg.errors.UndefinedTable:
                out[t] = {}
        return out

    conn.rollback()
    before = snap()
    _run(conn, text)
    after = snap()
    conn.rollback()
    return {t: {k for k, v in before[t].items() if after[t].get(k) != v} for t in KEYS}


def selected(conn: psycopg.Connection, t: Target) -> set:  # type: ignore[type-arg]
    """Keys of the rows a target saves, evaluated now (before the file runs)."""
    name = sql.Identifier(t.schema, t.table).as_string(conn)
    key = next(k for n, k in KEYS.items() if n in (t.table, name))
    if t.where is None:
        q = f"SELECT {key} FROM {name}"
    else:
        q = f"SELECT {key} FROM {t.from_sql} WHERE {t.where}"
    out = {r[0] for r in conn.execute(q).fetchall()}  # type: ignore[arg-type]
    conn.rollback()
    return out


def by_table(st: Statement) -> dict[str, Target]:
    out = {}
    for t in st.targets:
        assert t.table not in out, f"two targets on {t.table}"
        out[t.table] = t
    return out


def check_exact(conn: psycopg.Connection, text: str, st: Statement) -> None:
    """Every row target of st selects exactly the rows the file changes in its table."""
    real = changed(conn, text)
    for t in st.targets:
        key = t.table if t.schema == "public" else f'"{t.schema}"."{t.table}"'
        assert selected(conn, t) == real[key], t
        assert real[key], f"the test should change rows of {key}"


def test_update_from_join(shop: psycopg.Connection) -> None:
    text = (
        "UPDATE orders o SET status = 'flagged' FROM customers c\n"
        "WHERE c.id = o.customer_id AND c.region = 'eu' AND o.total > 100;"
    )
    assert shop.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    [st] = sqlscope.analyze(shop, text, source="m.sql")
    assert shop.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert (st.number, st.line, st.kind) == (1, 1, "UPDATE")
    oid = shop.execute("SELECT 'orders'::regclass::oid").fetchone()[0]  # type: ignore[index]
    assert st.targets == [
        Target(
            oid,
            "public",
            "orders",
            "orders AS o",
            "EXISTS (SELECT 1 FROM customers AS c WHERE c.id = o.customer_id AND c.region = 'eu'"
            " AND o.total > 100)",
            None,
            True,
            "rows the UPDATE's WHERE selects",
        )
    ]
    check_exact(shop, text, st)


def test_delete_using_cascades_to_children_and_grandchildren(shop: psycopg.Connection) -> None:
    text = (
        "-- drop churned EU customers\n\n"
        "DELETE FROM customers c USING orders o\n"
        "WHERE o.customer_id = c.id AND o.status = 'cancelled' AND c.region = 'eu'"
    )
    [st] = sqlscope.analyze(shop, text)
    assert (st.line, st.kind) == (3, "DELETE")
    assert st.text.startswith("DELETE FROM customers c")
    t = by_table(st)
    assert set(t) == {"customers", "orders", "order_items"}
    assert t["customers"].from_sql == "customers AS c"
    assert t["customers"].where == (
        "EXISTS (SELECT 1 FROM orders AS o WHERE o.customer_id = c.id"
        " AND o.status = 'cancelled' AND c.region = 'eu')"
    )
    assert t["orders"].reason == "ON DELETE CASCADE from public.customers"
    assert t["orders"].from_sql == "public.orders"
    assert (
        t["orders"].where == f"(customer_id) IN (SELECT id FROM customers AS c WHERE "
        f"{t['customers'].where})"
    )
    assert t["order_items"].reason == "ON DELETE CASCADE from public.orders"
    assert all(x.bounded and x.columns is None for x in st.targets)
    check_exact(shop, text, st)


def test_cte_and_subqueries(shop: psycopg.Connection) -> None:
    text = (
        "WITH big AS (SELECT customer_id FROM orders GROUP BY 1 HAVING sum(total) > 1100)\n"
        "UPDATE customers SET name = name || '!' WHERE id IN (SELECT customer_id FROM big)\n"
        "  AND region = (SELECT min(region) FROM customers)"
    )
    [st] = sqlscope.analyze(shop, text)
    [t] = st.targets
    assert t.from_sql == "customers"
    assert t.where == (
        "EXISTS (WITH big AS (SELECT customer_id FROM orders GROUP BY 1 HAVING sum(total) > 1100)"
        " SELECT 1 WHERE id IN (SELECT customer_id FROM big) AND region = (SELECT min(region)"
        " FROM customers))"
    )
    check_exact(shop, text, st)


def test_data_modifying_ctes(shop: psycopg.Connection) -> None:
    text = (
        "WITH gone AS (DELETE FROM orders WHERE status = 'cancelled' AND total < 100\n"
        "              RETURNING customer_id)\n"
        "UPDATE customers SET name = name || '!' WHERE id IN (SELECT customer_id FROM gone);\n"
        "WITH s AS (SELECT id FROM orders WHERE total > 400),\n"
        "     d AS (DELETE FROM order_items WHERE order_id IN (SELECT id FROM s) RETURNING 1)\n"
        "SELECT count(*) FROM d;"
    )
    first, second = sqlscope.analyze(shop, text)
    t = by_table(first)
    assert t["orders"].where == "status = 'cancelled' AND total < 100"
    assert t["orders"].from_sql == "orders" and t["orders"].bounded
    assert t["order_items"].reason == "ON DELETE CASCADE from public.orders"
    # The UPDATE reads the DELETE's RETURNING: not evaluable before the file runs.
    assert (t["customers"].where, t["customers"].bounded) == (None, False)
    real = changed(shop, text.split(";\n")[0])
    for name in ("orders", "order_items"):
        assert selected(shop, t[name]) == real[name]
    assert real["customers"] and real["customers"] <= selected(shop, t["customers"])
    # A modifying CTE reading a sibling CTE: whole table, unbounded.
    [u] = second.targets
    assert (u.table, u.where, u.bounded) == ("order_items", None, False)
    assert second.kind == "SELECT"


def test_upsert_with_column_list(shop: psycopg.Connection) -> None:
    text = (
        "INSERT INTO customers AS c (id, name, email, region) VALUES\n"
        "  (2, 'two', 'c2@x.org', 'eu'), (3, 'three', 'new3@x.org', DEFAULT),\n"
        "  (9999, 'new', 'n@x.org', 'us')\n"
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name"
    )
    # DEFAULT outside the conflict key becomes NULL in the WHERE's VALUES (DEFAULT is not
    # allowed there). region has no default, so the comparison runs a valid variant.
    [st] = sqlscope.analyze(shop, text)
    assert st.kind == "INSERT ... ON CONFLICT DO UPDATE"
    [t] = st.targets
    assert t.from_sql == "customers AS c"
    assert t.where == (
        "(c.id) IN (SELECT CAST(_ins.id AS integer) FROM (VALUES (2, 'two', "
        "'c2@x.org', 'eu'), (3, 'three', 'new3@x.org', NULL), (9999, 'new', "
        "'n@x.org', 'us')) AS _ins(id, name, email, region))"
    )
    assert t.reason == "rows whose conflict key (id) an inserted row repeats"
    check_exact(shop, text.replace("DEFAULT", "'us'"), st)


def test_upsert_on_constraint_from_select(shop: psycopg.Connection) -> None:
    text = (
        "WITH s AS (SELECT * FROM staging)\n"
        "INSERT INTO customers SELECT id + 1000, name, email, 'eu' FROM s\n"
        "ON CONFLICT ON CONSTRAINT customers_email_key DO UPDATE SET name = excluded.name"
    )
    [st] = sqlscope.analyze(shop, text)
    [t] = st.targets
    assert t.where is not None and t.where.startswith(
        "(customers.email) IN (WITH s AS (SELECT * FROM staging) SELECT CAST(_ins.email AS "
        "text) FROM (SELECT id + 1000, name, email, 'eu' FROM s) AS _ins(id, name, email, "
        "region))"
    )
    check_exact(shop, text, st)
    assert selected(shop, t) == {1, 8}


def test_upsert_that_cannot_be_bounded(shop: psycopg.Connection) -> None:
    [st] = sqlscope.analyze(
        shop,
        "INSERT INTO customers (name, email, region) VALUES ('a', "
        "'b', 'c') ON CONFLICT (lower(email)) DO UPDATE SET name = 'x'",
    )
    [t] = st.targets
    assert (t.where, t.from_sql, t.bounded) == (None, None, False)
    assert "expression key" in t.reason


def test_merge(shop: psycopg.Connection) -> None:
    if shop.info.server_version < 150000:
        pytest.skip("MERGE needs PostgreSQL 15")
    text = (
        "MERGE INTO orders o\n"
        "USING (SELECT id, total FROM orders WHERE id % 7 = 0 UNION ALL SELECT 100000, 1) s\n"
        "ON o.id = s.id\n"
        "WHEN MATCHED AND o.status = 'cancelled' THEN DELETE\n"
        "WHEN MATCHED THEN UPDATE SET total = o.total + 1\n"
        "WHEN NOT MATCHED THEN INSERT (id, customer_id, status, total)\n"
        "  VALUES (s.id, 1, 'new', s.total)"
    )
    [st] = sqlscope.analyze(shop, text)
    t = by_table(st)
    assert t["orders"].where == (
        "EXISTS (SELECT 1 FROM (SELECT id, total FROM orders WHERE id % 7"
        " = 0 UNION ALL SELECT 100000, 1) AS s WHERE o.id = s.id)"
    )
    assert t["orders"].reason == "rows the MERGE's join condition matches"
    real = changed(shop, text)
    assert selected(shop, t["orders"]) == real["orders"]
    # Items of every matched order (a superset: only the deleted orders' items go).
    assert real["order_items"] and real["order_items"] < selected(shop, t["order_items"])
    with pytest.raises(RecoveryError, match="nothing to save"):
        sqlscope.analyze(
            shop,
            "MERGE INTO customers c USING staging s ON c.id = s.id "
            "WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.name, s.email, 'x')",
        )


def test_update_of_a_referenced_key_cascades(shop: psycopg.Connection) -> None:
    text = "UPDATE orders SET id = id + 10000 WHERE id <= 5"
    [st] = sqlscope.analyze(shop, text)
    t = by_table(st)
    assert t["order_items"].reason == "ON UPDATE CASCADE from public.orders"
    check_exact(shop, text, st)
    # An UPDATE not touching the referenced key cascades nothing.
    [st] = sqlscope.analyze(shop, "UPDATE orders SET note = 'x' WHERE id <= 5")
    assert [x.table for x in st.targets] == ["orders"]


def test_truncate(shop: psycopg.Connection) -> None:
    a, b = sqlscope.analyze(
        shop, 'TRUNCATE orders;\nTRUNCATE TABLE customers, "Mixed"."T" CASCADE;'
    )
    [t] = a.targets
    assert (t.table, t.where, t.from_sql, t.columns, t.bounded, t.reason) == (
        "orders",
        None,
        None,
        None,
        True,
        "TRUNCATE: whole table",
    )
    assert [(x.schema, x.table) for x in b.targets] == [
        ("public", "customers"),
        ("Mixed", "T"),
        ("public", "order_items"),
        ("public", "orders"),
    ]
    assert b.targets[2].reason == "TRUNCATE CASCADE from public.customers, Mixed.T: whole table"
    assert b.line == 2


def test_drop_table_drop_column_alter_type(shop: psycopg.Connection) -> None:
    text = (
        "DROP TABLE IF EXISTS nosuch, order_items;\n"
        "ALTER TABLE orders DROP COLUMN note, ALTER COLUMN total TYPE numeric(12, 0),\n"
        "  ADD COLUMN x int;\n"
        "ALTER TABLE customers ALTER COLUMN mood TYPE text, ALTER COLUMN name SET NOT NULL;\n"
        "ALTER TABLE customers ADD COLUMN vip bool;\n"
        'DROP SCHEMA "Mixed" CASCADE;\n'
        "DROP TYPE mood CASCADE;"
    )
    drop, alter1, alter2, add, schema, typ = sqlscope.analyze(shop, text)
    [t] = drop.targets
    assert (t.table, t.where, t.reason) == ("order_items", None, "DROP TABLE: whole table")
    assert any("nosuch does not exist" in n for n in drop.notes)
    [t] = alter1.targets
    assert (t.table, t.columns, t.where, t.bounded) == ("orders", ("note", "total"), None, True)
    assert t.reason == "DROP COLUMN note; ALTER TYPE total: these columns of every row"
    [t] = alter2.targets
    assert t.columns == ("mood",)
    assert add.targets == [] and add.notes == ["destroys no existing row"]
    assert [(x.schema, x.table) for x in schema.targets] == [("Mixed", "T")]
    assert alter1.kind == "ALTER TABLE" and drop.kind == "DROP TABLE"
    [t] = typ.targets  # the enum's columns go with it
    assert (t.table, t.columns, t.reason) == (
        "customers",
        ("mood",),
        "DROP TYPE mood CASCADE drops these columns",
    )


def test_do_block_falls_back_to_whole_tables(shop: psycopg.Connection) -> None:
    text = (
        'DO $$\nBEGIN\n  UPDATE "Mixed"."T" SET "Val" = \'x\' WHERE "Id" < 5;\n'
        "  EXECUTE format('DELETE FROM %I WHERE id < 3', 'order_items');\nEND $$;"
    )
    [st] = sqlscope.analyze(shop, text)
    assert st.kind == "DO"
    t = by_table(st)
    assert set(t) == {"T", "order_items"}
    for x in t.values():
        assert (x.where, x.bounded) == (None, False)
        assert x.reason == "DO block: cannot bound, whole table"
    assert any("dynamic SQL" in n for n in st.notes)
    # Nothing to find: the file cannot be scoped at all.
    with pytest.raises(RecoveryError, match=r"line 2: the DO statement cannot be bounded.*--table"):
        sqlscope.analyze(
            shop,
            "SELECT 1;\nDO $$ DECLARE t text := 'x' || 'y'; BEGIN "
            "EXECUTE 'DELETE FROM ' || t; END $$",
        )


def test_user_function_calls_fall_back(shop: psycopg.Connection, sql_exec) -> None:  # type: ignore[no-untyped-def]
    sql_exec("""
        CREATE FUNCTION archive(days int) RETURNS int LANGUAGE plpgsql AS $$
        BEGIN DELETE FROM customers WHERE id > 1000 - days; RETURN 1; END $$;
        CREATE FUNCTION bump() RETURNS void LANGUAGE sql AS
            $$ UPDATE "Mixed"."T" SET "Val" = "Val" || '!' $$;
        CREATE FUNCTION total_of(int) RETURNS numeric LANGUAGE sql STABLE AS
            $$ SELECT sum(total) FROM orders WHERE customer_id = $1 $$;
        CREATE PROCEDURE wipe() LANGUAGE plpgsql AS $$ BEGIN TRUNCATE staging; END $$;
    """)
    text = (
        "SELECT archive(30);\nSELECT public.bump();\n"
        "UPDATE customers SET name = 'rich' WHERE total_of(id) > 1000;\nCALL wipe();"
    )
    archive, bump, upd, call = sqlscope.analyze(shop, text)
    t = by_table(archive)
    assert set(t) == {"customers", "orders", "order_items"}  # FK actions from the whole table
    assert (t["customers"].bounded, t["customers"].reason) == (
        False,
        "calls public.archive(): cannot bound, whole table",
    )
    assert t["orders"].where == "(customer_id) IN (SELECT id FROM public.customers)"
    assert [(x.table, x.bounded) for x in bump.targets] == [("T", False)]
    assert [x.table for x in upd.targets] == ["customers"] and upd.targets[0].bounded  # STABLE
    assert (call.kind, [x.table for x in call.targets]) == ("CALL", ["staging"])


def test_cross_statement_widening(shop: psycopg.Connection) -> None:
    text = (
        "UPDATE orders SET status = 'void' WHERE id <= 10;\n"
        "DELETE FROM order_items WHERE order_id IN\n"
        "  (SELECT id FROM orders WHERE status = 'void');\n"
        "DELETE FROM orders WHERE status = 'void';"
    )
    first, second, third = sqlscope.analyze(shop, text)
    [t] = second.targets
    assert (t.table, t.where, t.bounded) == ("order_items", None, False)
    assert (
        "public.order_items: reads public.orders, which statement 1 writes: widened to the "
        "whole table"
    ) in second.notes
    own = by_table(third)
    assert own["orders"].where == "status = 'void'" and own["orders"].bounded  # its own table
    assert (own["order_items"].where, own["order_items"].bounded) == (None, False)
    # Together the targets cover everything the file destroys.
    real = changed(shop, text)
    saved: dict[str, set] = {}  # type: ignore[type-arg]
    for st in (first, second, third):
        for x in st.targets:
            saved.setdefault(x.table, set()).update(selected(shop, x))
    assert real["orders"] <= saved["orders"] and real["order_items"] <= saved["order_items"]


def test_partitions_views_mixed_case_and_missing_tables(shop: psycopg.Connection) -> None:
    text = (
        "DELETE FROM events WHERE at < '2024-07-01';\n"
        "UPDATE events_2025 SET kind = 'z' WHERE id % 2 = 0;\n"
        'UPDATE ONLY "Mixed"."T" t SET "Val" = \'z\' WHERE t."Id" < 5;\n'
        "UPDATE paid SET note = 'x' WHERE id < 10;\n"
        "UPDATE nosuch SET a = 1;\nCREATE TABLE later (id int);\nDELETE FROM later;\n"
        "UPDATE orders SET note = 'n' WHERE CURRENT OF c;"
    )
    sts = sqlscope.analyze(shop, text)
    ev, part, mixed, view, missing, create, later, cur = sts
    assert ev.targets[0].table == "events" and ev.targets[0].bounded
    assert part.targets[0].table == "events_2025"
    relkinds = {
        r[0]
        for r in shop.execute(
            "SELECT relkind::text FROM pg_class WHERE oid = ANY(%s)",
            [[ev.targets[0].relid, part.targets[0].relid]],
        ).fetchall()
    }
    assert relkinds == {"p", "r"}
    [m] = mixed.targets
    assert (m.schema, m.table, m.from_sql) == ("Mixed", "T", 'ONLY "Mixed"."T" AS t')
    [v] = view.targets
    assert (v.table, v.bounded, v.where) == ("orders", False, None)
    assert any("public.paid is a view" in n for n in view.notes)
    assert (
        missing.targets == []
        and "nosuch does not exist (yet): nothing of it to save" in missing.notes
    )
    assert create.notes == ["destroys no existing row"] and create.kind == "CREATE TABLE"
    assert (
        later.targets == [] and "later does not exist (yet): nothing of it to save" in later.notes
    )
    assert cur.targets[0].bounded is False and "CURRENT OF" in cur.targets[0].reason
    for st in (ev, part, mixed):
        check_exact(shop, st.text, st)


def test_search_path_set_in_the_file(shop: psycopg.Connection) -> None:
    text = (
        'SET search_path = "Mixed", public;\n'
        'UPDATE "T" SET "Val" = \'x\' WHERE "Id" IN (SELECT customer_id FROM orders);\n'
        "RESET search_path;\n"
        'DELETE FROM "T";'
    )
    _, st, _, gone = sqlscope.analyze(shop, text)
    [t] = st.targets
    assert (t.schema, t.table, t.from_sql) == ("Mixed", "T", '"Mixed"."T"')
    assert t.where == '"Id" IN (SELECT customer_id FROM public.orders)'
    assert gone.targets == [] and '"T" does not exist (yet): nothing of it to save' in gone.notes
    check_exact(shop, text.split("RESET")[0], st)


def test_where_that_does_not_run_before_the_file_is_widened(shop: psycopg.Connection) -> None:
    text = "ALTER TABLE orders ADD COLUMN flag bool;\nDELETE FROM orders WHERE flag;"
    _, st = sqlscope.analyze(shop, text)
    t = by_table(st)
    assert (t["orders"].where, t["orders"].bounded) == (None, False)
    assert any("does not run before the file" in n for n in st.notes)


def test_errors(shop: psycopg.Connection) -> None:
    bad = "UPDATE orders SET status = 'x';\n\nDELETE FROM WHERE id = 1;"
    with pytest.raises(
        RecoveryError, match=re.escape('m.sql: line 3: syntax error at or near "WHERE"')
    ):
        sqlscope.analyze(shop, bad, source="m.sql")
    with pytest.raises(RecoveryError, match="m.sql: no SQL statement"):
        sqlscope.analyze(shop, "-- nothing\n/* here */\n", source="m.sql")
    with pytest.raises(
        RecoveryError,
        match="no statement in m.sql writes or drops an existing table: nothing to save",
    ):
        sqlscope.analyze(
            shop,
            "CREATE TABLE x (a int PRIMARY KEY);\nINSERT INTO x VALUES (1);\n"
            "INSERT INTO customers VALUES (1, 'a', 'b', 'c') ON CONFLICT DO "
            "NOTHING;\nSELECT count(*) FROM orders;\nBEGIN;\nCOMMIT;",
            source="m.sql",
        )
    # Inside a transaction, analyze leaves it open and usable.
    shop.execute("SELECT 1")
    sqlscope.analyze(shop, "DELETE FROM orders WHERE id = 1")
    assert shop.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    shop.rollback()


def test_estimate(shop: psycopg.Connection) -> None:
    text = (
        "DELETE FROM customers WHERE id < 10;\nALTER TABLE orders DROP COLUMN note;\n"
        "CREATE TABLE t2 (a int);"
    )
    stmts = sqlscope.analyze(shop, text)
    sqlscope.estimate(shop, stmts)
    assert shop.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    delete, alter, create = stmts
    for t in delete.targets + alter.targets:
        assert t.est_rows and t.est_rows > 0 and t.est_bytes and t.est_bytes > 0
    assert delete.est_rows == sum(t.est_rows or 0 for t in delete.targets)
    assert alter.est_rows == 300
    assert (create.est_rows, create.est_bytes) == (0, 0)
    # A target that cannot be planned: None and a note, and the transaction stays usable.
    st = Statement(
        1, 1, "x", "DELETE", [Target(1, "public", "gone", "gone", "true", None, True, "test")], []
    )
    shop.execute("SELECT 1")
    sqlscope.estimate(shop, [st])
    assert (st.targets[0].est_rows, st.est_rows) == (None, None)
    assert st.notes and st.notes[0].startswith("cannot estimate public.gone")
    assert shop.execute("SELECT 1").fetchone() == (1,)
    shop.rollback()


def test_a_self_subquery_after_an_earlier_write_widens_to_the_whole_table(conn, sql_exec):
    from recovery.snapshot.sqlscope import analyze

    sql_exec(
        "CREATE TABLE t2 (id int PRIMARY KEY, status text);"
        "INSERT INTO t2 VALUES (5, 'cancel'), (9, 'cancel'), (11, 'active')"
    )
    stmts = analyze(
        conn,
        "UPDATE t2 SET status = 'active' WHERE id = 9;\n"
        "DELETE FROM t2 WHERE id IN (SELECT max(id) FROM t2"
        " WHERE status = 'cancel');\n"
        "DELETE FROM t2 WHERE status = 'gone';\n",
    )
    # The second DELETE's subquery reads t2, which statement 1 changes: after it, the
    # max is 5, not 9, so only the whole table is safe.  The third reads only its own
    # row's columns: rows statement 1 changed are saved by statement 1.
    assert [(t.where, t.bounded) for t in stmts[1].targets] == [(None, False)]
    assert stmts[2].targets[0].bounded and stmts[2].targets[0].where is not None
