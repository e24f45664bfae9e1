"""Capture against a real PostgreSQL: every journal is proved by undoing it.

Each test captures writes, undoes them with `rollback`, and compares the table
with its state before, row by row through `::text`, so that every byte counts
(-0 and 0, 1.0 and 1.00, json whitespace, trailing blanks).
"""

from __future__ import annotations

import itertools
import os

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery import (
    RecoveryError,
    Selector,
    capture_status,
    disable_capture,
    enable_capture,
    init,
    rollback,
)
from recovery.schema import SCHEMA_VERSION

# -- helpers -------------------------------------------------------------------------


def texts(conn: psycopg.Connection, table: str, order: str = "1") -> list[str]:
    """Every row of a table as its ::text form, in a stable order, in a fresh transaction."""
    conn.rollback()
    out = [r[0] for r in conn.execute(f"SELECT x::text FROM {table} x ORDER BY {order}")]
    conn.rollback()
    return out


def placed(conn: psycopg.Connection, table: str, order: str) -> list[tuple[str, str]]:
    """Rows of a partitioned table with the partition each one lives in."""
    conn.rollback()
    out = conn.execute(
        f"SELECT x.tableoid::regclass::text, x::text FROM {table} x ORDER BY {order}"
    ).fetchall()
    conn.rollback()
    return out


def cells(conn: psycopg.Connection, table: str, order: str = "1") -> list[dict[str, str | None]]:
    """Every row as {column: value::text}, so a mismatch names its column."""
    conn.rollback()
    cols = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            [table],
        )
    ]
    sel = ", ".join(f'x."{c}"::text AS _c{n}' for n, c in enumerate(cols))
    out = [
        dict(zip(cols, r)) for r in conn.execute(f"SELECT {sel} FROM {table} x ORDER BY {order}")
    ]
    conn.rollback()
    return out


def tagged(sql_exec, tag: str, stmt: str) -> None:  # type: ignore[no-untyped-def]
    """Run stmt as an application would, under `SET recovery.tag`."""
    sql_exec(f"SET recovery.tag = '{tag}'; {stmt}")


def undo(conn: psycopg.Connection, *tags: str, on_conflict: str = "fail"):  # type: ignore[no-untyped-def]
    report = rollback(conn, Selector(tags=tags), on_conflict=on_conflict)
    assert report.status == "done"
    assert report.conflicts == 0
    return report


def journal(sql_exec, tag: str) -> list[tuple[str, str, int]]:  # type: ignore[no-untyped-def]
    """(table, op, rows) of every captured statement with this tag, in order."""
    return sql_exec(
        "SELECT c.schema_name || '.' || c.table_name, st.op::text, st.nrows::int "
        "FROM _recovery.stmt st JOIN _recovery.captured c USING (table_id) "
        "WHERE st.tag = %s ORDER BY st.stmt_id",
        [tag],
    )


def state(conn: psycopg.Connection, table: str) -> tuple[str, list[str]]:
    conn.rollback()
    found = [s for s in capture_status(conn) if s.table == table]
    conn.rollback()
    assert len(found) == 1, [s.table for s in capture_status(conn)]
    return found[0].state, found[0].problems


# -- partitioned tables ----------------------------------------------------------------

ORDERS = """
CREATE TABLE orders (region text NOT NULL, id int NOT NULL, v text, amount numeric,
                     PRIMARY KEY (region, id)) PARTITION BY LIST (region);
CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');
"""

# A partition whose column order and attribute numbers differ from the parent's.
ODD_PARTITION = """
CREATE TABLE {name} (junk int, amount numeric, v text, id int NOT NULL, region text NOT NULL);
ALTER TABLE {name} DROP COLUMN junk;
ALTER TABLE orders ATTACH PARTITION {name} {bound};
"""

ORDER_ROWS = """
INSERT INTO orders
SELECT (ARRAY['eu', 'us', 'apac', 'other'])[1 + g % 4], g, 'v' || g, g * 1.50
FROM generate_series(1, 60) g
"""


def test_partitioned_writes_through_parent_and_partitions(conn, sql_exec):
    sql_exec(ORDERS)
    sql_exec(ODD_PARTITION.format(name="orders_apac", bound="FOR VALUES IN ('apac')"))
    sql_exec("CREATE TABLE orders_rest PARTITION OF orders DEFAULT")
    sql_exec(ORDER_ROWS)
    assert enable_capture(conn, ["orders"]) == ["public.orders"]
    before = placed(conn, "orders", "region, id")
    assert {p for p, _ in before} == {"orders_eu", "orders_us", "orders_apac", "orders_rest"}

    # Through the parent, touching every partition.
    tagged(
        sql_exec,
        "bad",
        "INSERT INTO orders VALUES ('eu', 100, 'n', 1), ('apac', 101, 'n', 2), ('zz', 102, 'n', 3)",
    )
    tagged(sql_exec, "bad", "UPDATE orders SET v = v || '!', amount = amount * 2 WHERE id % 5 = 0")
    # Rows moving across partitions (eu -> us, apac -> default, default -> apac).
    tagged(
        sql_exec,
        "bad",
        "UPDATE orders SET region = 'us', v = 'moved' WHERE region = 'eu' AND id < 30",
    )
    tagged(
        sql_exec,
        "bad",
        "UPDATE orders SET region = CASE region WHEN 'apac' THEN 'nowhere'"
        " ELSE 'apac' END WHERE id IN (2, 3, 6, 7)",
    )
    tagged(sql_exec, "bad", "DELETE FROM orders WHERE id % 7 = 0")
    # Aimed directly at partitions (only the partition's statement triggers fire).
    tagged(sql_exec, "bad", "INSERT INTO orders_apac (region, id, v) VALUES ('apac', 200, 'd')")
    tagged(sql_exec, "bad", "UPDATE orders_apac SET v = 'direct', amount = NULL WHERE id < 40")
    n_us = sql_exec("SELECT count(*) FROM orders_us WHERE id > 40")[0][0]
    tagged(sql_exec, "bad", "DELETE FROM orders_us WHERE id > 40")
    tagged(sql_exec, "bad", "UPDATE orders_rest SET amount = -amount")
    tagged(sql_exec, "bad", "INSERT INTO orders_eu VALUES ('eu', 300, 'e', 3)")

    got = journal(sql_exec, "bad")
    assert [(t, op) for t, op, _ in got] == [("public.orders", op) for op in "IUUUDIUDUI"]
    assert got[0][2] == 3 and got[7][2] == n_us > 0
    # The moved rows: before-images in the old partition's region, after-images in the new.
    moved = sql_exec(
        "SELECT rec_img::text, c1, count(*) FROM _recovery.j_1 WHERE rec_stmt = (SELECT stmt_id"
        " FROM _recovery.stmt WHERE tag = 'bad' ORDER BY stmt_id OFFSET 2 LIMIT 1)"
        " GROUP BY 1, 2 ORDER BY 1"
    )
    assert moved == [("A", "us", 7), ("B", "eu", 7)]

    undo(conn, "bad")
    assert placed(conn, "orders", "region, id") == before


def test_partitioned_truncate_parent_and_one_partition(conn, sql_exec):
    sql_exec(ORDERS)
    sql_exec(ODD_PARTITION.format(name="orders_apac", bound="FOR VALUES IN ('apac')"))
    sql_exec("CREATE TABLE orders_rest PARTITION OF orders DEFAULT")
    sql_exec(ORDER_ROWS)
    enable_capture(conn, ["orders"])
    before = placed(conn, "orders", "region, id")
    per_part = {p: sum(1 for q, _ in before if q == p) for p, _ in before}

    tagged(sql_exec, "trunc-part", "TRUNCATE orders_us")
    assert journal(sql_exec, "trunc-part") == [("public.orders", "T", per_part["orders_us"])]
    sql_exec("INSERT INTO orders VALUES ('eu', 500, 'later', 5)")  # legitimate, kept
    tagged(sql_exec, "trunc-all", "TRUNCATE orders")
    assert sorted(n for _, op, n in journal(sql_exec, "trunc-all")) == sorted(
        [per_part["orders_eu"] + 1, per_part["orders_apac"], per_part["orders_rest"]]
    )
    assert texts(conn, "orders") == []

    undo(conn, "trunc-all")
    after_all = [("orders_eu", "(eu,500,later,5)")]
    assert placed(conn, "orders", "region, id") == sorted(
        [x for x in before if x[0] != "orders_us"] + after_all, key=_region_id
    )
    undo(conn, "trunc-part")
    assert placed(conn, "orders", "region, id") == sorted(before + after_all, key=_region_id)


def _region_id(row: tuple[str, str]) -> tuple[str, int]:
    region, ident = row[1].strip("()").split(",")[:2]
    return region, int(ident)


def test_partitions_created_after_enable_are_captured(conn, sql_exec):
    sql_exec(ORDERS)
    sql_exec("INSERT INTO orders SELECT 'eu', g, 'v', g FROM generate_series(1, 5) g")
    enable_capture(conn, ["orders"])
    # CREATE TABLE ... PARTITION OF, ATTACH of an odd-shaped table, and a partition that
    # is itself partitioned, all after capture was enabled.
    sql_exec("CREATE TABLE orders_apac PARTITION OF orders FOR VALUES IN ('apac')")
    sql_exec(ODD_PARTITION.format(name="orders_rest", bound="DEFAULT"))
    sql_exec(
        "CREATE TABLE orders_asia PARTITION OF orders FOR VALUES IN ('asia') "
        "PARTITION BY RANGE (id)"
    )
    sql_exec("CREATE TABLE orders_asia_lo PARTITION OF orders_asia FOR VALUES FROM (0) TO (1000)")
    assert state(conn, "public.orders") == ("on", [])
    sql_exec(
        "INSERT INTO orders SELECT r, g, 'v' || g, g FROM generate_series(10, 30) g, "
        "unnest(ARRAY['apac', 'asia', 'xx']) r"
    )
    before = placed(conn, "orders", "region, id")

    tagged(sql_exec, "bad", "UPDATE orders SET v = 'p' WHERE id % 2 = 0")
    tagged(sql_exec, "bad", "UPDATE orders_apac SET v = 'apac!' WHERE id < 15")
    tagged(sql_exec, "bad", "DELETE FROM orders_asia WHERE id > 25")
    tagged(sql_exec, "bad", "UPDATE orders_asia_lo SET amount = 0 WHERE id < 20")
    tagged(sql_exec, "bad", "DELETE FROM orders_rest WHERE id < 20")
    tagged(sql_exec, "bad", "UPDATE orders SET region = 'asia' WHERE region = 'apac' AND id > 27")
    tagged(sql_exec, "bad", "TRUNCATE orders_asia_lo")
    assert [op for _, op, _ in journal(sql_exec, "bad")] == list("UUDUDUT")

    undo(conn, "bad")
    assert placed(conn, "orders", "region, id") == before


def test_detached_partition_is_no_longer_captured(conn, sql_exec):
    sql_exec(ORDERS)
    sql_exec(
        "INSERT INTO orders SELECT r, g, 'v', g FROM generate_series(1, 4) g, "
        "unnest(ARRAY['eu', 'us']) r"
    )
    enable_capture(conn, ["orders"])
    sql_exec("ALTER TABLE orders DETACH PARTITION orders_us")
    tagged(sql_exec, "after-detach", "DELETE FROM orders_us WHERE id < 3")
    tagged(sql_exec, "after-detach", "UPDATE orders SET v = 'x' WHERE id = 1")
    # Only the write to the table still in the tree is the table's.
    assert journal(sql_exec, "after-detach") == [("public.orders", "U", 1)]
    assert sql_exec(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders_us'::regclass AND NOT tgisinternal"
    ) == [(0,)]
    assert state(conn, "public.orders") == ("on", [])


def test_many_partitions_enable_and_capture(conn, sql_exec):
    sql_exec("CREATE TABLE big (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)")
    sql_exec(
        "".join(
            f"CREATE TABLE big_{i} PARTITION OF big FOR VALUES FROM ({i * 10}) TO ({i * 10 + 10});"
            for i in range(80)
        )
    )
    sql_exec("INSERT INTO big SELECT g, 'v' || g FROM generate_series(0, 799) g")
    enable_capture(conn, ["big"])
    # The DDL that enabling runs does not set off the event trigger again (it did,
    # once per trigger created, nested, until the stack ran out).
    assert sql_exec("SELECT kind FROM _recovery.events ORDER BY id") == [("enable",)]
    assert sql_exec(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE c.relname LIKE 'big%' AND t.tgname LIKE '\\_recovery%'"
    ) == [
        # parent: before-statement, insert, update, delete; leaves: also truncate
        (4 + 80 * 5,)
    ]
    before = texts(conn, "big")
    tagged(sql_exec, "bad", "UPDATE big_79 SET v = 'x'; DELETE FROM big WHERE id % 9 = 0")
    sql_exec("CREATE TABLE big_80 PARTITION OF big FOR VALUES FROM (800) TO (810)")
    tagged(sql_exec, "bad", "INSERT INTO big_80 VALUES (800, 'new')")
    assert sql_exec("SELECT kind FROM _recovery.events ORDER BY id") == [("enable",), ("ddl",)]
    assert state(conn, "public.big") == ("on", [])
    undo(conn, "bad")
    assert texts(conn, "big") == before


def test_partition_of_captured_table_cannot_be_enabled_alone(conn, sql_exec):
    sql_exec(ORDERS)
    enable_capture(conn, ["orders"])
    with pytest.raises(RecoveryError, match="partition of public.orders"):
        enable_capture(conn, ["orders_eu"])


# -- keys --------------------------------------------------------------------------------


def test_composite_primary_key(conn, sql_exec):
    sql_exec(
        "CREATE TABLE lines (order_id int, line text, qty int, note text, "
        "PRIMARY KEY (line, order_id) DEFERRABLE)"
    )
    sql_exec(
        "INSERT INTO lines SELECT o, 'l' || l, o * l, NULL FROM generate_series(1, 5) o, "
        "generate_series(1, 4) l"
    )
    enable_capture(conn, ["lines"])
    before = texts(conn, "lines", "order_id, line")
    tagged(sql_exec, "bad", "UPDATE lines SET qty = 0, note = 'zeroed' WHERE order_id = 2")
    # A key change in one column of two, onto a key that was freed in the same statement.
    tagged(sql_exec, "bad", "UPDATE lines SET order_id = order_id + 1 WHERE order_id IN (4, 5)")
    tagged(sql_exec, "bad", "DELETE FROM lines WHERE line = 'l3'")
    tagged(sql_exec, "bad", "INSERT INTO lines VALUES (9, 'l1', 1, 'new'), (1, 'l9', 1, 'new')")
    undo(conn, "bad")
    assert texts(conn, "lines", "order_id, line") == before


def test_table_without_primary_key_needs_key(conn, sql_exec):
    sql_exec(
        "CREATE TABLE nopk (code text NOT NULL, maybe int, dup int NOT NULL, v text);"
        "CREATE UNIQUE INDEX ON nopk (code);"
        "CREATE UNIQUE INDEX ON nopk (maybe);"
    )
    sql_exec("INSERT INTO nopk SELECT 'c' || g, g, 1, 'v' || g FROM generate_series(1, 6) g")

    with pytest.raises(RecoveryError) as err:
        enable_capture(conn, ["nopk"])
    assert "no primary key" in str(err.value) and "--key" in str(err.value)
    with pytest.raises(RecoveryError, match="allows NULL"):
        enable_capture(conn, ["nopk"], key=["maybe"])
    with pytest.raises(RecoveryError, match="not unique"):
        enable_capture(conn, ["nopk"], key=["dup"])
    with pytest.raises(RecoveryError, match="not found"):
        enable_capture(conn, ["nopk"], key=["nosuch"])
    # Refusals leave nothing behind.
    assert sql_exec("SELECT count(*) FROM _recovery.captured") == [(0,)]
    assert sql_exec("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'nopk'::regclass") == [(0,)]

    assert enable_capture(conn, ["nopk"], key=["code"]) == ["public.nopk"]
    assert [(s.key, s.key_source, s.state) for s in capture_status(conn)] == [
        (["code"], "--key", "on")
    ]
    before = texts(conn, "nopk", "code")
    tagged(sql_exec, "bad", "UPDATE nopk SET v = upper(v), maybe = NULL WHERE maybe < 4")
    tagged(sql_exec, "bad", "DELETE FROM nopk WHERE maybe = 5")
    tagged(sql_exec, "bad", "INSERT INTO nopk VALUES ('c9', NULL, 1, 'new')")
    undo(conn, "bad")
    assert texts(conn, "nopk", "code") == before


def test_key_of_several_columns_matches_unique_index_in_any_order(conn, sql_exec):
    sql_exec(
        "CREATE TABLE k2 (a int NOT NULL, b text NOT NULL, v text);CREATE UNIQUE INDEX ON k2 (b, a)"
    )
    sql_exec("INSERT INTO k2 SELECT g % 3, 'b' || (g / 3), 'v' || g FROM generate_series(0, 11) g")
    enable_capture(conn, ["k2"], key=["a", "b"])
    before = texts(conn, "k2", "a, b")
    tagged(sql_exec, "bad", "UPDATE k2 SET v = NULL WHERE a = 1; DELETE FROM k2 WHERE a = 2")
    undo(conn, "bad")
    assert texts(conn, "k2", "a, b") == before


# -- generated and identity columns -------------------------------------------------------


def test_generated_and_identity_columns(conn, sql_exec):
    sql_exec(
        "CREATE TABLE items (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " seq bigint GENERATED BY DEFAULT AS IDENTITY (START 1000) UNIQUE,"
        " price numeric NOT NULL, qty int NOT NULL,"
        " total numeric GENERATED ALWAYS AS (price * qty) STORED,"
        " label text GENERATED ALWAYS AS ('#' || id || ':' || seq) STORED)"
    )
    sql_exec("INSERT INTO items (price, qty) SELECT g * 1.25, g FROM generate_series(1, 8) g")
    sql_exec("INSERT INTO items (seq, price, qty) VALUES (5, 9.99, 3)")  # explicit BY DEFAULT value
    enable_capture(conn, ["items"])
    before = texts(conn, "items", "id")
    assert before[0] == "(1,1000,1.25,1,1.25,#1:1000)"

    tagged(sql_exec, "bad", "DELETE FROM items WHERE id IN (2, 4, 9)")
    tagged(sql_exec, "bad", "UPDATE items SET price = price + 1, qty = 0 WHERE id IN (1, 3)")
    tagged(sql_exec, "bad", "UPDATE items SET seq = DEFAULT WHERE id = 5")
    tagged(sql_exec, "bad", "INSERT INTO items (price, qty) VALUES (1, 1)")
    # The generated columns were captured as computed.
    assert sql_exec("SELECT c5::text FROM _recovery.j_1 WHERE rec_img = 'A' AND c1 = 1") == [
        ("0.00",)
    ]
    undo(conn, "bad")
    assert texts(conn, "items", "id") == before
    # The identity sequences go on from where they were: a new row gets fresh values.
    sql_exec("INSERT INTO items (price, qty) VALUES (2, 2)")
    assert texts(conn, "items", "id")[-1] == "(11,1010,2,2,4,#11:1010)"


# -- large values ---------------------------------------------------------------------------


def test_values_of_several_megabytes(conn, sql_exec):
    sql_exec("CREATE TABLE blobs (id int PRIMARY KEY, t text, b bytea)")
    big_text = os.urandom(2_750_000).hex()[:5_500_000]  # incompressible, 5.5 MB
    big_bytes = os.urandom(5 * 1024 * 1024)
    with psycopg.connect(conn.info.dsn, autocommit=True) as c:
        c.execute(
            "INSERT INTO blobs VALUES (1, %s, %s), (2, %s, %s), (3, 'small', '\\x00')",
            [big_text, big_bytes, big_text[::-1], big_bytes[::-1]],
        )
    enable_capture(conn, ["blobs"])
    tagged(sql_exec, "bad", "UPDATE blobs SET t = 'gone', b = NULL WHERE id = 1")
    tagged(sql_exec, "bad", "DELETE FROM blobs WHERE id = 2")
    tagged(sql_exec, "bad", "UPDATE blobs SET t = repeat('y', 6000000), b = NULL WHERE id = 3")
    undo(conn, "bad")
    conn.rollback()
    got = conn.execute("SELECT id, t, b FROM blobs ORDER BY id").fetchall()
    conn.rollback()
    assert got == [
        (1, big_text, big_bytes),
        (2, big_text[::-1], big_bytes[::-1]),
        (3, "small", b"\x00"),
    ]


# -- names -----------------------------------------------------------------------------------


def test_mixed_case_and_quoted_names(conn, sql_exec):
    sql_exec(
        'CREATE SCHEMA "Sales";'
        'CREATE TABLE "Sales"."Order Items" ("Order Id" int, "Line" int,'
        ' "Unit Price" numeric(10, 2), "it\'s ""odd"" %s" text, "UPPER" text,'
        ' PRIMARY KEY ("Order Id", "Line"))'
    )
    sql_exec(
        'INSERT INTO "Sales"."Order Items" SELECT g / 3, g % 3, g * 1.5, \'o\' || g, '
        "NULL FROM generate_series(1, 12) g"
    )
    assert enable_capture(conn, ['"Sales"."Order Items"']) == ["Sales.Order Items"]
    assert state(conn, "Sales.Order Items") == ("on", [])
    tbl = '"Sales"."Order Items"'
    before = texts(conn, tbl, '"Order Id", "Line"')
    tagged(
        sql_exec,
        "bad",
        f'UPDATE {tbl} SET "Unit Price" = 0, "it\'s ""odd"" %s" = \'%\' WHERE "Line" = 1',
    )
    tagged(sql_exec, "bad", f'DELETE FROM {tbl} WHERE "Order Id" = 2')
    tagged(sql_exec, "bad", f'UPDATE {tbl} SET "Order Id" = "Order Id" + 100 WHERE "Line" = 0')
    tagged(sql_exec, "bad", f"INSERT INTO {tbl} VALUES (50, 1, 1, 'x', 'Y')")
    undo(conn, "bad")
    assert texts(conn, tbl, '"Order Id", "Line"') == before
    tagged(sql_exec, "bad2", f"TRUNCATE {tbl}")
    undo(conn, "bad2")
    assert texts(conn, tbl, '"Order Id", "Line"') == before
    # The unquoted spelling of a mixed-case name is found as typed.
    disable_capture(conn, ["Sales.Order Items"])
    assert state(conn, "Sales.Order Items")[0] == "off"


# -- the table's own triggers -------------------------------------------------------------


def test_own_triggers_do_not_touch_restored_rows(conn, sql_exec):
    sql_exec("""
        CREATE TABLE audit (id serial PRIMARY KEY, op text, row_id int, rev int);
        CREATE TABLE acct (id int PRIMARY KEY, balance numeric NOT NULL,
                           updated_at timestamptz NOT NULL DEFAULT '2020-01-01 00:00+00',
                           rev int NOT NULL DEFAULT 1);
        CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.updated_at := clock_timestamp(); NEW.rev := OLD.rev + 1; RETURN NEW; END $$;
        CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO audit (op, row_id, rev)
          VALUES (TG_OP, coalesce(NEW.id, OLD.id), coalesce(NEW.rev, OLD.rev));
          RETURN NULL;
        END $$;
        CREATE TRIGGER a_touch BEFORE UPDATE ON acct FOR EACH ROW EXECUTE FUNCTION touch();
        CREATE TRIGGER z_log AFTER INSERT OR UPDATE OR DELETE ON acct
            FOR EACH ROW EXECUTE FUNCTION log_it();
        CREATE TRIGGER z_stmt AFTER UPDATE ON acct FOR EACH STATEMENT EXECUTE FUNCTION log_it();
        ALTER TABLE acct ENABLE ALWAYS TRIGGER z_stmt;
    """)
    sql_exec("INSERT INTO acct (id, balance) SELECT g, g * 100 FROM generate_series(1, 6) g")
    sql_exec("UPDATE acct SET balance = balance + 1 WHERE id = 6")  # rev 2, a real timestamp
    enable_capture(conn, ["acct"])
    triggers = sql_exec(
        "SELECT tgname, tgenabled::text FROM pg_trigger "
        "WHERE tgrelid = 'acct'::regclass AND tgname NOT LIKE '\\_recovery%' "
        "ORDER BY 1"
    )
    before = texts(conn, "acct")
    tagged(sql_exec, "bad", "UPDATE acct SET balance = 0 WHERE id IN (1, 2, 6)")
    tagged(sql_exec, "bad", "UPDATE acct SET balance = -1 WHERE id = 1")
    tagged(sql_exec, "bad", "DELETE FROM acct WHERE id IN (3, 4)")
    tagged(sql_exec, "bad", "INSERT INTO acct (id, balance) VALUES (7, 7)")
    assert texts(conn, "acct")[0].split(",")[-1] == "3)"  # the trigger did fire on the bad write
    audit = texts(conn, "audit")

    undo(conn, "bad")
    assert texts(conn, "acct") == before  # updated_at and rev as they were, exactly
    assert texts(conn, "audit") == audit  # the undo left no audit trail of its own
    # Triggers are back as they were, and fire again for the application.
    assert (
        sql_exec(
            "SELECT tgname, tgenabled::text FROM pg_trigger "
            "WHERE tgrelid = 'acct'::regclass AND tgname NOT LIKE '\\_recovery%' "
            "ORDER BY 1"
        )
        == triggers
    )
    sql_exec("UPDATE acct SET balance = 1 WHERE id = 5")
    assert texts(conn, "acct")[4].endswith(",2)")
    assert len(texts(conn, "audit")) == len(audit) + 2


# -- schema changes on a captured table ----------------------------------------------------

# Each change as a template over the table's name, and the name the table has after it.
DDL = {
    "add column": ("ALTER TABLE {t} ADD COLUMN extra int NOT NULL DEFAULT 7", "{t}"),
    "add nullable column": ("ALTER TABLE {t} ADD COLUMN extra jsonb", "{t}"),
    "drop column": ("ALTER TABLE {t} DROP COLUMN note", "{t}"),
    "rename column": ('ALTER TABLE {t} RENAME COLUMN note TO "Remark"', "{t}"),
    "retype column": ("ALTER TABLE {t} ALTER COLUMN n TYPE numeric(12, 2)", "{t}"),
    "retype to text": ("ALTER TABLE {t} ALTER COLUMN n TYPE text", "{t}"),
    "retype twice": (
        "ALTER TABLE {t} ALTER COLUMN n TYPE bigint; ALTER TABLE {t} ALTER COLUMN n TYPE numeric",
        "{t}",
    ),
    "rename table": ("ALTER TABLE {t} RENAME TO {t}_renamed", "{t}_renamed"),
    "set schema": (
        "CREATE SCHEMA IF NOT EXISTS other; ALTER TABLE {t} SET SCHEMA other",
        "other.{t}",
    ),
}


@pytest.mark.parametrize("change", list(DDL))
def test_schema_change_is_followed(conn, sql_exec, change):
    ddl, renamed = DDL[change]
    name, twin = renamed.format(t="s"), renamed.format(t="w")
    label = name if "." in name else f"public.{name}"
    # w: an uncaptured twin that gets the same schema change but none of the writes.
    for t in ("s", "w"):
        sql_exec(f"CREATE TABLE {t} (id int PRIMARY KEY, n int, note text)")
        sql_exec(f"INSERT INTO {t} SELECT g, g * 10, 'note ' || g FROM generate_series(1, 8) g")
    enable_capture(conn, ["s"])
    # Changes made just before the schema change (the last statement before it, too).
    tagged(sql_exec, "pre", "UPDATE s SET n = -n, note = 'pre' WHERE id <= 2")
    tagged(sql_exec, "pre", "DELETE FROM s WHERE id = 8")
    sql_exec(ddl.format(t="s"))
    sql_exec(ddl.format(t="w"))
    assert state(conn, label) == ("on", [])
    at_ddl = texts(conn, name)
    # The application goes on writing; its writes are captured and undoable.
    tagged(sql_exec, "post", f"UPDATE {name} SET id = id + 100 WHERE id = 3")
    tagged(sql_exec, "post", f"UPDATE {name} SET n = NULL WHERE id = 4")
    tagged(sql_exec, "post", f"DELETE FROM {name} WHERE id = 5")
    tagged(sql_exec, "post", f"INSERT INTO {name} (id) VALUES (9)")
    assert journal(sql_exec, "post") == [
        (label, "U", 1),
        (label, "U", 1),
        (label, "D", 1),
        (label, "I", 1),
    ]
    undo(conn, "post")
    assert texts(conn, name) == at_ddl
    # Changes from before the schema change are undone in the table's new shape.
    undo(conn, "pre")
    assert texts(conn, name) == texts(conn, twin)


def test_rows_deleted_before_columns_were_added_come_back_with_their_defaults(conn, sql_exec):
    for t in ("s", "w"):
        sql_exec(f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
        sql_exec(f"INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, 4) g")
    enable_capture(conn, ["s"])
    tagged(sql_exec, "bad", "UPDATE s SET v = 'x' WHERE id = 1; DELETE FROM s")  # table empty
    for t in ("s", "w"):
        sql_exec(
            f"ALTER TABLE {t} ADD COLUMN n int NOT NULL DEFAULT 7,"
            " ADD COLUMN e text DEFAULT 'e', ADD COLUMN none text,"
            " ADD COLUMN at timestamptz NOT NULL DEFAULT '2020-02-02 02:02+00',"
            " ADD COLUMN tags text[] NOT NULL DEFAULT '{a,\"b c\"}'"
        )
    sql_exec("ALTER TABLE s ALTER COLUMN n SET DEFAULT 8")  # later default: not the rows'
    assert state(conn, "public.s") == ("on", [])
    undo(conn, "bad")
    assert texts(conn, "s") == texts(conn, "w")
    assert texts(conn, "s")[0] == '(1,v1,7,e,,"2020-02-02 02:02:00+00","{a,""b c""}")'


def test_schema_change_without_event_trigger_stops_capture_plainly(conn, sql_exec):
    sql_exec("CREATE TABLE s (id int PRIMARY KEY, n int, note text)")
    sql_exec("INSERT INTO s SELECT g, g, 'x' FROM generate_series(1, 4) g")
    enable_capture(conn, ["s"])
    sql_exec("DROP EVENT TRIGGER _recovery_follow_ddl")
    sql_exec("ALTER TABLE s DROP COLUMN note")
    # The application's write succeeds; capture of this table stops, and says so.
    tagged(sql_exec, "unseen", "UPDATE s SET n = 0 WHERE id = 1")
    assert texts(conn, "s") == ["(1,0)", "(2,2)", "(3,3)", "(4,4)"]
    assert journal(sql_exec, "unseen") == []
    st, problems = state(conn, "public.s")
    assert st == "stopped"
    assert len(problems) == 1
    assert "changed shape" in problems[0] and "recovery capture enable" in problems[0]
    assert "ERROR" not in problems[0] and "\n" not in problems[0]

    enable_capture(conn, ["s"])
    assert state(conn, "public.s") == ("on", [])
    before = texts(conn, "s")
    tagged(sql_exec, "bad", "UPDATE s SET n = 99; DELETE FROM s WHERE id = 2")
    undo(conn, "bad")
    assert texts(conn, "s") == before


@pytest.mark.parametrize(
    "ddl, write, after",
    [
        # A column dropped and another of the same type added: same types in the same
        # order, but at another attribute number (the journal maps by attribute number).
        (
            "ALTER TABLE s DROP COLUMN note; ALTER TABLE s ADD COLUMN memo varchar(10)",
            "UPDATE s SET n = 0, memo = 'm' WHERE id = 1",
            ["(1,0,m)", "(2,2,)", "(3,3,)"],
        ),
        # Only the type modifier changes: a longer value would not fit the journal column.
        (
            "ALTER TABLE s ALTER COLUMN note TYPE varchar(30)",
            "UPDATE s SET n = 0, note = repeat('y', 25) WHERE id = 1",
            [f"(1,0,{'y' * 25})", "(2,2,x)", "(3,3,x)"],
        ),
    ],
)
def test_any_shape_change_without_event_trigger_keeps_writes_working(
    conn, sql_exec, ddl, write, after
):
    sql_exec("CREATE TABLE s (id int PRIMARY KEY, n int, note varchar(10))")
    sql_exec("INSERT INTO s SELECT g, g, 'x' FROM generate_series(1, 3) g")
    enable_capture(conn, ["s"])
    sql_exec("DROP EVENT TRIGGER _recovery_follow_ddl")
    sql_exec(ddl)
    tagged(sql_exec, "unseen", write)
    assert texts(conn, "s") == after
    assert journal(sql_exec, "unseen") == []
    st, problems = state(conn, "public.s")
    assert st == "stopped" and "changed shape" in problems[0]
    enable_capture(conn, ["s"])
    before = texts(conn, "s")
    tagged(sql_exec, "bad", "UPDATE s SET n = 99; DELETE FROM s WHERE id = 2")
    undo(conn, "bad")
    assert texts(conn, "s") == before


def test_new_partition_without_event_trigger_is_reported(conn, sql_exec):
    sql_exec(ORDERS)
    enable_capture(conn, ["orders"])
    sql_exec("DROP EVENT TRIGGER _recovery_follow_ddl")
    sql_exec("CREATE TABLE orders_apac PARTITION OF orders FOR VALUES IN ('apac')")
    sql_exec("INSERT INTO orders_apac VALUES ('apac', 1, 'a', 1)")  # succeeds
    st, problems = state(conn, "public.orders")
    assert st == "stopped"
    assert len(problems) == 1
    assert problems[0].startswith("orders_apac ") and "capture trigger" in problems[0]
    assert "recovery capture enable" in problems[0] and "\n" not in problems[0]
    enable_capture(conn, ["orders"])
    assert state(conn, "public.orders") == ("on", [])
    before = placed(conn, "orders", "region, id")
    tagged(sql_exec, "bad", "DELETE FROM orders_apac")
    undo(conn, "bad")
    assert placed(conn, "orders", "region, id") == before


# -- a matrix of types ------------------------------------------------------------------------

MATRIX = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE m (
    id int PRIMARY KEY,
    i2 smallint, i4 int, i8 bigint, num numeric, num_p numeric(12, 4), r4 real,
    r8 double precision, t text, vc varchar(20), ch char(5), b bytea, bo boolean,
    d date, tm time, ttz timetz, ts timestamp(3), tstz timestamptz, iv interval,
    u uuid, js json, jb jsonb, arr int[], arr2 text[], mood mood, moods mood[], dom posint,
    comp pair, rng int4range, trng tstzrange, nr numrange, mr int4multirange,
    ip inet, cid cidr, mac macaddr, mny money, bt bit(4), vb varbit, tsv tsvector, x xml,
    pt point, ch1 "char", nm name
);
"""

MATRIX_ROWS = r"""
INSERT INTO m VALUES
(1, -32768, -2147483648, 9223372036854775807, 'NaN', 12345678.1234, '-0', 'NaN',
 E'emoji \U0001F600 e\u0301 \u200d tab\t nl\n quote'' bs\\ nbsp\u00a0', 'trailing  ', 'ab',
 '\x00ff10', true, 'infinity', '24:00:00', '23:59:59.999999+14', '-infinity', 'infinity',
 '-1 year 2 mons -3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
 '{"a":1,   "a" : 2, "b": [1,2 , 3]  }', '{"b": {"c": [1, null, "x"]}, "a": 1.50}',
 '{1,NULL,3}', '{{a,NULL},{"c d","\"q\""}}', 'happy', '{sad,NULL,happy}', 5,
 '(1,"x y")', '[1,10)', '[2020-01-01 00:00+00,infinity)', 'empty', '{[1,3),[5,7)}',
 '2001:db8::1/64', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34, B'1010', B'101',
 'fat:2 rat:3 cat', '<a b="1">t&amp;<![CDATA[x]]></a>', '(1.5,-2)', 'q', 'name'),
(2, 32767, 0, -1, '-0.000000000000000001', 1.0, 'Infinity', '-0', '', '', '', '', false,
 '-infinity', '00:00:00', '00:00:00-12', 'infinity', '-infinity', '0', NULL, '[]', 'null',
 '{}', '{}', 'sad', '{}', 1, '(,)', 'empty', '(,)', '(-1.5,2.25]', '{}',
 '0.0.0.0', '::/0', 'ff:ff:ff:ff:ff:ff', -0.01, B'0000', B'', '', 'plain text', '(0,-0)',
 ' ', ''),
(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
(4, 1, 1, 1, 1.0, 0.1, 0.1, 0.1, 'x', 'x', 'x', 'x', true, '2000-02-29', '12:00', '12:00+01',
 '1999-12-31 23:59:59.999', '1970-01-01 00:00:00.000001+00', '1 day', gen_random_uuid(),
 '{"k": "v"}', '{"k": "v"}', '{{1,2},{3,4}}', '{"\\"}', 'ok', '{ok}', 2, '(2,"")',
 '[,5)', '[2021-06-01 12:00+02,2021-06-02 12:00+02)', '[0,1]', '{[1,2)}', '127.0.0.1',
 '192.168.0.0/16', '00:00:00:00:00:00', 0, B'1111', B'1', 'a:1', '<r/>', '(1e300,-1e-300)',
 'z', 'n')
"""


def test_type_matrix_round_trip(conn, sql_exec):
    try:
        sql_exec("SELECT '<r/>'::xml")
        matrix = MATRIX
    except psycopg.errors.FeatureNotSupported:  # a server built without libxml
        matrix = MATRIX.replace(" x xml,", " x text,")
    sql_exec(matrix)
    sql_exec(MATRIX_ROWS)
    sql_exec(
        "INSERT INTO m SELECT 10 + id, i2, i4, i8, num, num_p, r4, r8, t, vc, ch, b, bo, d,"
        " tm, ttz, ts, tstz, iv, u, js, jb, arr, arr2, mood, moods, dom, comp, rng, trng, nr,"
        " mr, ip, cid, mac, mny, bt, vb, tsv, x, pt, ch1, nm FROM m"
    )
    enable_capture(conn, ["m"])
    before = cells(conn, "m", "id")
    whole = texts(conn, "m", "id")
    assert before[0]["r4"] == "-0" and before[1]["r8"] == "-0" and before[0]["num"] == "NaN"
    cols = [c for c in before[0] if c != "id"]
    collist = ", ".join(cols)

    # Every value moved to another row, every row to NULLs and back, some deleted.
    tagged(
        sql_exec,
        "bad",
        f"UPDATE m SET ({collist}) = (SELECT {collist} FROM m y "
        f"WHERE y.id = m.id % 4 + 1) WHERE id <= 4",
    )
    tagged(
        sql_exec,
        "bad",
        f"UPDATE m SET ({collist}) = (SELECT {collist} FROM m y WHERE y.id = 3) WHERE id = 12",
    )
    # Changes equality cannot see: -0 to 0, 1.0 to 1.00, json whitespace, NaN to NaN.
    tagged(
        sql_exec,
        "bad",
        "UPDATE m SET r4 = 0, r8 = 0, num = 1.00, num_p = 1, "
        "js = (js::jsonb)::json, ts = ts WHERE id IN (11, 14)",
    )
    tagged(sql_exec, "bad", "DELETE FROM m WHERE id IN (13, 14)")
    tagged(
        sql_exec,
        "bad",
        f"INSERT INTO m (id, {collist}) SELECT 20 + id, {collist} FROM m WHERE id <= 4",
    )
    assert cells(conn, "m", "id") != before

    undo(conn, "bad")
    assert cells(conn, "m", "id") == before
    assert texts(conn, "m", "id") == whole


_counter = itertools.count()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.text(
                st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=40,
            ),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.one_of(st.none(), st.integers(min_value=-(2**31), max_value=2**31 - 1)),
        ),
        min_size=1,
        max_size=15,
    )
)
def test_text_and_integers_round_trip(db_url, rows):
    with psycopg.connect(db_url, autocommit=True) as app:
        app.execute("CREATE TABLE IF NOT EXISTS h (id int PRIMARY KEY, t text, n bigint, i int)")
        with psycopg.connect(db_url) as conn:
            if not [s for s in capture_status(conn) if s.state == "on"]:
                enable_capture(conn, ["h"])
            app.execute("DELETE FROM h")
            with app.cursor() as cur:
                cur.executemany(
                    "INSERT INTO h VALUES (%s, %s, %s, %s)", [(k, *r) for k, r in enumerate(rows)]
                )
            before = conn.execute("SELECT id, t, n, i FROM h ORDER BY id").fetchall()
            conn.rollback()
            assert before == [(k, *r) for k, r in enumerate(rows)]
            tag = f"h{next(_counter)}"
            app.execute(f"SET recovery.tag = '{tag}'")
            app.execute("UPDATE h SET t = reverse(t) || 'x', n = n # 1, i = NULL")
            app.execute("DELETE FROM h WHERE id % 2 = 0")
            app.execute("RESET recovery.tag")
            undo(conn, tag)
            assert conn.execute("SELECT id, t, n, i FROM h ORDER BY id").fetchall() == before
            conn.rollback()


# -- statement metadata and write forms -------------------------------------------------------


def test_statement_metadata(conn, db_url):
    with psycopg.connect(db_url, autocommit=True, application_name="billing-job") as app:
        app.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        enable_capture(conn, ["t"])
        app.execute("SET recovery.tag = 'deploy-42'")
        with app.transaction():
            txid = app.execute("SELECT txid_current()").fetchone()[0]  # type: ignore[index]
            app.execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 3) g")
            app.execute("UPDATE t SET v = 'w' WHERE id < 3")
            app.execute("UPDATE t SET v = 'none' WHERE id > 100")  # touches nothing
            app.execute("DELETE FROM t WHERE id = 3")
        app.execute("RESET recovery.tag")
        app.execute("TRUNCATE t")
    got = conn.execute(
        "SELECT op::text, nrows, txid = %s, db_user = current_user, app, tag, "
        "at <= clock_timestamp() FROM _recovery.stmt ORDER BY stmt_id",
        [txid],
    ).fetchall()
    conn.rollback()
    assert got == [
        ("I", 3, True, True, "billing-job", "deploy-42", True),
        ("U", 2, True, True, "billing-job", "deploy-42", True),
        ("D", 1, True, True, "billing-job", "deploy-42", True),
        ("T", 2, False, True, "billing-job", None, True),
    ]


def test_upsert_merge_and_writable_ctes(conn, sql_exec):
    sql_exec("CREATE TABLE t (id int PRIMARY KEY, v text, n int)")
    sql_exec("INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 20) g")
    enable_capture(conn, ["t"])
    before = texts(conn, "t")
    tagged(
        sql_exec,
        "bad",
        "INSERT INTO t SELECT g, 'up', 0 FROM generate_series(15, 25) g "
        "ON CONFLICT (id) DO UPDATE SET v = excluded.v || t.v",
    )
    tagged(
        sql_exec,
        "bad",
        """
        MERGE INTO t USING (SELECT g AS id FROM generate_series(1, 30) g) s ON t.id = s.id
        WHEN MATCHED AND t.id % 3 = 0 THEN DELETE
        WHEN MATCHED AND t.id % 3 = 1 THEN UPDATE SET n = -t.n, v = 'merged'
        WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'm', s.id)""",
    )
    tagged(
        sql_exec,
        "bad",
        "WITH a AS (UPDATE t SET v = 'cte1' WHERE id = 2 RETURNING id), "
        "b AS (DELETE FROM t WHERE id = 5 RETURNING id) "
        "UPDATE t SET v = 'cte2' WHERE id = 8",
    )
    assert texts(conn, "t") != before
    undo(conn, "bad")
    assert texts(conn, "t") == before


def test_key_changing_update_of_many_rows_pairs_images(conn, sql_exec):
    sql_exec("CREATE TABLE t (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 3000) g")
    enable_capture(conn, ["t"])
    before = texts(conn, "t")
    tagged(sql_exec, "bad", "UPDATE t SET id = -id, v = v || '!' WHERE id % 3 <> 0")
    tagged(sql_exec, "bad", "UPDATE t SET id = id + 5000 WHERE id % 3 = 0")
    undo(conn, "bad")
    assert texts(conn, "t") == before


def test_replica_mode_and_repeated_updates_in_one_transaction(conn, sql_exec):
    sql_exec("CREATE TABLE t (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5) g")
    enable_capture(conn, ["t"])
    before = texts(conn, "t")
    tagged(
        sql_exec,
        "bad",
        "SET session_replication_role = replica; UPDATE t SET v = 'replica' WHERE id = 1",
    )
    tagged(
        sql_exec,
        "bad",
        "BEGIN; UPDATE t SET v = 'a' WHERE id = 2; "
        "UPDATE t SET v = 'b' WHERE id = 2; DELETE FROM t WHERE id = 2; "
        "INSERT INTO t VALUES (2, 'c'); COMMIT",
    )
    assert [op for _, op, _ in journal(sql_exec, "bad")] == list("UUUDI")
    undo(conn, "bad")
    assert texts(conn, "t") == before


# -- init and truncate --------------------------------------------------------------------------


def test_init_again_keeps_captured_data(conn, sql_exec):
    sql_exec("CREATE TABLE t (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5) g")
    enable_capture(conn, ["t"])
    before = texts(conn, "t")
    tagged(sql_exec, "bad", "UPDATE t SET v = 'x' WHERE id < 3; DELETE FROM t WHERE id = 5")
    journal_before = sql_exec("SELECT j::text FROM _recovery.j_1 j ORDER BY 1")
    stmts_before = sql_exec("SELECT s::text FROM _recovery.stmt s ORDER BY stmt_id")
    captured_before = sql_exec("SELECT c::text FROM _recovery.captured c")

    res = init(conn)
    v = SCHEMA_VERSION
    assert (res.previous_version, res.version, res.ddl_follow) == (v, v, True)
    init(conn)
    assert sql_exec("SELECT j::text FROM _recovery.j_1 j ORDER BY 1") == journal_before
    assert sql_exec("SELECT s::text FROM _recovery.stmt s ORDER BY stmt_id") == stmts_before
    assert sql_exec("SELECT c::text FROM _recovery.captured c") == captured_before
    assert sql_exec(
        "SELECT count(*) FROM pg_event_trigger WHERE evtname = '_recovery_follow_ddl'"
    ) == [(1,)]
    assert state(conn, "public.t") == ("on", [])

    # Capture goes on after init, and what was captured before it is still undoable.
    tagged(sql_exec, "bad", "INSERT INTO t VALUES (6, 'new')")
    undo(conn, "bad")
    assert texts(conn, "t") == before

    # A version 1 schema (no snapshots table) is refused until `init` upgrades it in
    # place, keeping what was captured.
    tagged(sql_exec, "bad3", "UPDATE t SET v = 'y' WHERE id = 1")
    journal_v1 = sql_exec("SELECT j::text FROM _recovery.j_1 j ORDER BY 1")
    sql_exec(
        "DROP TABLE _recovery.snapshots; "
        "UPDATE _recovery.meta SET value = '1' WHERE key = 'schema_version'"
    )
    with pytest.raises(RecoveryError, match=f"version 1, this tool needs {SCHEMA_VERSION}"):
        undo(conn, "bad3")
    res = init(conn)
    assert (res.previous_version, res.version) == (1, SCHEMA_VERSION)
    assert sql_exec("SELECT j::text FROM _recovery.j_1 j ORDER BY 1") == journal_v1
    assert sql_exec("SELECT count(*) FROM _recovery.snapshots") == [(0,)]
    undo(conn, "bad3")
    assert texts(conn, "t") == before


def test_truncate_of_plain_table_is_undone(conn, sql_exec):
    sql_exec(
        "CREATE TABLE parent (id int PRIMARY KEY, v text);"
        "CREATE TABLE child (id int PRIMARY KEY, pid int REFERENCES parent, v text)"
    )
    sql_exec(
        "INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 10) g;"
        "INSERT INTO child SELECT g, g % 10 + 1, 'c' || g FROM generate_series(1, 30) g"
    )
    enable_capture(conn, ["parent", "child"])
    parents, children = texts(conn, "parent"), texts(conn, "child")
    tagged(sql_exec, "bad", "TRUNCATE child")
    assert journal(sql_exec, "bad") == [("public.child", "T", 30)]
    undo(conn, "bad")
    assert texts(conn, "child") == children
    tagged(sql_exec, "bad2", "TRUNCATE parent CASCADE")
    assert sorted(journal(sql_exec, "bad2")) == [
        ("public.child", "T", 30),
        ("public.parent", "T", 10),
    ]
    undo(conn, "bad2")
    assert (texts(conn, "parent"), texts(conn, "child")) == (parents, children)
    # An empty table's TRUNCATE records nothing.
    sql_exec("CREATE TABLE empty (id int PRIMARY KEY)")
    enable_capture(conn, ["empty"])
    tagged(sql_exec, "bad3", "TRUNCATE empty")
    assert journal(sql_exec, "bad3") == []


def test_enable_again_and_disable_keep_history(conn, sql_exec):
    sql_exec("CREATE TABLE t (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5) g")
    enable_capture(conn, ["t"])
    before = texts(conn, "t")
    tagged(sql_exec, "bad", "UPDATE t SET v = 'x' WHERE id = 1")
    enable_capture(conn, ["t"])  # idempotent
    disable_capture(conn, ["t"])
    assert state(conn, "public.t") == ("off", [])
    tagged(sql_exec, "unseen", "UPDATE t SET v = 'y' WHERE id = 2")
    assert journal(sql_exec, "unseen") == []
    sql_exec("UPDATE t SET v = 'v2' WHERE id = 2")
    enable_capture(conn, ["t"])
    tagged(sql_exec, "bad", "DELETE FROM t WHERE id = 3")
    assert sql_exec("SELECT count(*) FROM _recovery.captured") == [(1,)]
    undo(conn, "bad")
    assert texts(conn, "t") == before


def test_ddl_in_replica_mode_is_followed(conn, sql_exec):
    # The event trigger is enabled ALWAYS: a session in replica mode (logical
    # replication apply, some restore tools) that alters a captured table does not
    # leave capture stopped.
    sql_exec("CREATE TABLE rep (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO rep VALUES (1, 'a'), (2, 'b')")
    enable_capture(conn, ["rep"])
    sql_exec("SET session_replication_role = replica; ALTER TABLE rep ADD COLUMN w int")
    assert state(conn, "public.rep") == ("on", [])
    before = texts(conn, "rep")
    tagged(sql_exec, "bad", "UPDATE rep SET v = 'x', w = 7 WHERE id = 1")
    undo(conn, "bad")
    assert texts(conn, "rep") == before
