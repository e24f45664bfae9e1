"""`recovery demo`: a bad deploy in a small shop, undone selectively, every row checked.

The shop (customers, orders, order_items, payments) has foreign keys with ON DELETE
CASCADE, an enum, jsonb and an updated_at trigger.  A tagged "deploy" corrupts
prices, wipes preferences and deletes customers (their orders, items and payments
go with them), while untagged legitimate traffic keeps writing, some of it to the
very rows the deploy damaged.  Every legitimate statement is also applied to a
shadow copy taken before the deploy (schema demo_expected), so the final check
compares each row of the shop with what it must be after the undo.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from ..capture import wal
from ..capture.journal import changes, diff
from ..capture.triggers import enable
from ..db import connect, redact, resolve_url
from ..embedded import Cluster, start
from ..errors import RecoveryError
from ..schema import init
from ..selector import Selector
from ..undo.engine import rollback
from . import render

TAG = "deploy-42"
TABLES = ("customers", "orders", "order_items", "payments")
KEYS = {"customers": "id", "orders": "id", "order_items": "order_id, line_no", "payments": "id"}

SCHEMA_SQL = """
CREATE TYPE tier AS ENUM ('bronze', 'silver', 'gold');
CREATE TABLE customers (
    id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, tier tier NOT NULL,
    prefs jsonb NOT NULL, updated_at timestamptz NOT NULL);
CREATE TABLE orders (
    id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers ON DELETE CASCADE,
    status text NOT NULL, total numeric(12,2) NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE order_items (
    order_id int NOT NULL REFERENCES orders ON DELETE CASCADE, line_no int NOT NULL,
    product text NOT NULL, qty int NOT NULL, unit_price numeric(10,2) NOT NULL,
    PRIMARY KEY (order_id, line_no));
CREATE TABLE payments (
    id int PRIMARY KEY, order_id int NOT NULL REFERENCES orders ON DELETE CASCADE,
    amount numeric(12,2) NOT NULL, method text NOT NULL);
CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at = clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER customers_touch BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
"""

# {n}: number of orders.  Deterministic data: the same every run.
DATA_SQL = """
INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com',
    (ARRAY['bronze','silver','gold']::tier[])[1 + g % 3],
    jsonb_build_object('newsletter', g % 2 = 0, 'lang', (ARRAY['en','fr','de'])[1 + g % 3]),
    timestamptz '2026-01-01' + g * interval '1 minute'
    FROM generate_series(1, {c}) g;
INSERT INTO orders SELECT g, 1 + g % {c}, (ARRAY['new','paid','shipped'])[1 + g % 3], 0,
    timestamptz '2026-02-01' + g * interval '1 second' FROM generate_series(1, {n}) g;
INSERT INTO order_items SELECT o, l, 'product ' || ((o * 7 + l) % 500), 1 + (o + l) % 5,
    ((o * 13 + l * 7) % 9000) / 100.0 + 1 FROM generate_series(1, {n}) o, generate_series(1, 2) l;
UPDATE orders o SET total = s.t FROM (SELECT order_id, sum(qty * unit_price) t
    FROM order_items GROUP BY order_id) s WHERE s.order_id = o.id;
INSERT INTO payments SELECT g, g, o.total, (ARRAY['card','paypal','transfer'])[1 + g % 3]
    FROM generate_series(1, {n}) g JOIN orders o ON o.id = g WHERE g % 4 <> 0;
"""

# The bad deploy: (description, SQL).  Runs in one session with recovery.tag set.
BAD = [
    (
        "price backfill multiplies unit prices by 100 for a product range",
        "UPDATE order_items SET unit_price = unit_price * 100 WHERE product < 'product 2'",
    ),
    (
        "order totals recomputed from the wrong prices",
        "UPDATE orders o SET total = s.t FROM (SELECT order_id, sum(qty * unit_price) t FROM "
        "order_items WHERE product < 'product 2' GROUP BY order_id) s WHERE s.order_id = o.id",
    ),
    (
        "gold customers' preferences wiped",
        "UPDATE customers SET prefs = '{{}}' WHERE tier = 'gold' AND id % 10 <> 7",
    ),
    (
        "cleanup deletes 'inactive' customers, cascading to their orders, items, payments",
        "DELETE FROM customers WHERE id % 50 = 3",
    ),
]

# Legitimate traffic, interleaved with the deploy; {s} is the schema (public or the
# shadow copy).  Some of it writes other columns of rows the deploy damaged.
LEGIT = [
    (
        "new orders arrive",
        "INSERT INTO {s}.orders SELECT {n} + g, 1 + g * 11 % {c}, 'new', 10 * g,"
        " timestamptz '2026-11-28' FROM generate_series(1, 300) g"
        " WHERE (1 + g * 11 % {c}) % 50 <> 3;"
        "INSERT INTO {s}.order_items SELECT {n} + g, 1, 'product 1' || g, 1, 10 * g"
        " FROM generate_series(1, 300) g WHERE (1 + g * 11 % {c}) % 50 <> 3",
    ),
    (
        "orders ship: status changes on orders whose totals the deploy broke",
        "UPDATE {s}.orders SET status = 'shipped' WHERE id % 7 = 0 AND status = 'paid'"
        " AND id <= {n}",
    ),
    (
        "customers change quantities on items the deploy repriced",
        "UPDATE {s}.order_items SET qty = qty + 1 WHERE order_id % 11 = 0 AND line_no = 1",
    ),
    (
        "a support agent fixes one damaged price by hand (a real conflict)",
        "UPDATE {s}.order_items SET unit_price = 9.99 WHERE (order_id, line_no) = ("
        "SELECT order_id, line_no FROM {s}.order_items WHERE product < 'product 2'"
        " AND order_id % 50 <> 0 ORDER BY 1, 2 LIMIT 1)",
    ),
    (
        "customers who are not gold update their e-mail",
        "UPDATE {s}.customers SET email = 'new-' || email WHERE id % 13 = 0 AND tier <> 'gold'",
    ),
    (
        "refund payments",
        "INSERT INTO {s}.payments SELECT {n} + g, g, -1, 'refund' FROM generate_series(1, 200) g"
        " JOIN {s}.orders o ON o.id = g",
    ),
]


def _shop(conn: psycopg.Connection, orders: int) -> int:
    conn.execute(SCHEMA_SQL)
    conn.execute(DATA_SQL.format(c=max(orders // 3, 100), n=orders))
    conn.commit()
    total = 0
    for t in TABLES:
        # fetchone() is typed Optional; count(*) returns one row
        total += conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
        ).fetchone()[0]  # type: ignore[index]
    conn.execute("ANALYZE")
    conn.commit()
    return total


def _shadow(conn: psycopg.Connection) -> None:
    conn.execute("CREATE SCHEMA demo_expected")
    for t in TABLES:
        conn.execute(
            sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(
                sql.Identifier("demo_expected", t), sql.Identifier(t)
            )
        )
    conn.commit()


def _legit(conn: psycopg.Connection, shadow: psycopg.Connection, i: int, orders: int) -> str:
    desc, text = LEGIT[i]
    fmt = {"n": orders, "c": max(orders // 3, 100)}
    conn.execute(text.format(s="public", **fmt))
    conn.commit()
    # The shadow copy has no trigger: mark legitimately touched customers instead.
    shadow_text = text.format(s="demo_expected", **fmt)
    if "customers SET" in shadow_text:
        shadow_text = shadow_text.replace("SET email", "SET updated_at = NULL, email")
    shadow.execute(shadow_text)
    shadow.commit()
    return desc


def _verify(conn: psycopg.Connection) -> dict[str, int]:
    """Count rows per table that differ from the expected state (0 everywhere is a pass)."""
    bad: dict[str, int] = {}
    for t in TABLES:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                "AND NOT attisdropped AND attname <> 'updated_at' ORDER BY attnum",
                [t],
            ).fetchall()
        ]
        keys = [k.strip() for k in KEYS[t].split(",")]
        row_r = sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in cols)
        row_e = sql.SQL(", ").join(sql.SQL("e.{}").format(sql.Identifier(c)) for c in cols)
        extra = sql.SQL("")
        if t == "customers":
            extra = sql.SQL(" OR (e.updated_at IS NOT NULL AND r.updated_at <> e.updated_at)")
        # fetchone() is typed Optional; count(*) returns one row
        n = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {r} r FULL JOIN {e} e USING ({k})"
                " WHERE ROW({rr})::text IS DISTINCT FROM ROW({ee})::text{extra}"
            ).format(
                r=sql.Identifier(t),
                e=sql.Identifier("demo_expected", t),
                k=sql.SQL(", ").join(sql.Identifier(k) for k in keys),
                rr=row_r,
                ee=row_e,
                extra=extra,
            )
        ).fetchone()[0]  # type: ignore[index]
        bad[t] = int(n)
    conn.rollback()
    return bad


def run_demo(
    db: str | None = None,
    *,
    rows: int = 200_000,
    keep: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the whole story; return timings, counts and whether every row checked out."""
    say = echo or (lambda _s: None)
    orders = max(rows // 3, 300)
    timings: dict[str, float] = {}
    cluster: Cluster | None = None
    admin_url: str
    dbname = f"recovery_demo_{uuid.uuid4().hex[:8]}"
    if db is None:
        say("starting an embedded PostgreSQL (pgserver) in a temporary directory ...")
        t0 = time.monotonic()
        try:
            cluster = start("pgserver", fast=False)
        except RecoveryError:
            cluster = start("local", fast=False)
        timings["server start"] = time.monotonic() - t0
        admin_url = cluster.url
    else:
        admin_url = resolve_url(db)
        say(f"using a scratch database {dbname} on {redact(admin_url)}")
    try:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        info = psycopg.conninfo.conninfo_to_dict(admin_url)
        info["dbname"] = dbname
        url = psycopg.conninfo.make_conninfo("", **info)
        try:
            return _story(url, orders, timings, say)
        finally:
            if not keep or cluster is not None:
                with psycopg.connect(admin_url, autocommit=True) as admin:
                    # its WAL capture slot first: a database with a slot cannot be dropped
                    admin.execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                        " WHERE database = %s",
                        [dbname],
                    )
                    admin.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(dbname)
                        )
                    )
            elif keep:
                say(f"kept scratch database {dbname}")
    finally:
        if cluster is not None:
            cluster.stop()


def _story(
    url: str, orders: int, timings: dict[str, float], say: Callable[[str], None]
) -> dict[str, Any]:
    conn = connect(url)
    bad_conn = connect(url)
    legit_conn = connect(url)
    shadow = connect(url)
    try:
        t0 = time.monotonic()
        total = _shop(conn, orders)
        timings["build shop"] = time.monotonic() - t0
        say(f"built a shop with {total:,} rows (customers, orders, order_items, payments)")
        init(conn)
        conn.commit()
        # The WAL source where this server has what it needs (the embedded one does),
        # else the trigger source; the demo says which.
        with conn.transaction():
            source = "trigger" if wal.requirements(conn) else "wal"
        t0 = time.monotonic()
        enable(conn, list(TABLES), source=source)
        timings["capture enable"] = time.monotonic() - t0
        say(f"recovery init; recovery capture enable {' '.join(TABLES)} --source {source}")
        say(
            "  (capture from the WAL: logical decoding, nearly free for the writers)"
            if source == "wal"
            else "  (capture by triggers: this server has no wal_level=logical)"
        )
        _shadow(shadow)

        say(f"\n== the bad deploy ({TAG}), interleaved with legitimate traffic ==")
        bad_conn.execute("SELECT set_config('recovery.tag', %s, false)", [TAG])
        bad_conn.commit()
        t_bad = 0.0
        for i, (desc, text) in enumerate(BAD):
            t0 = time.monotonic()
            n = bad_conn.execute(text.format()).rowcount
            bad_conn.commit()
            t_bad += time.monotonic() - t0
            say(f"  [{TAG}] {desc}: {n:,} rows")
            for j in (2 * i, 2 * i + 1):
                if j < len(LEGIT):
                    say(f"  [legit] {_legit(legit_conn, shadow, j, orders)}")
        timings["bad deploy statements"] = t_bad

        sel = Selector(tags=(TAG,))
        say("\n$ recovery changes --tag " + TAG)
        say(render.changes(changes(conn, sel)))
        say(f"\n$ recovery diff --tag {TAG} --limit 2")
        say(render.diff(diff(conn, sel, limit=2)))

        say(f"\n$ recovery rollback --tag {TAG} --dry-run")
        t0 = time.monotonic()
        plan = rollback(conn, sel, dry_run=True)
        timings["plan (dry run)"] = time.monotonic() - t0
        say(render.rollback(plan))

        say(f"\n$ recovery rollback --tag {TAG} --on-conflict skip --yes")
        t0 = time.monotonic()
        # A throwaway database: no second person to approve the undo (README: Two-person
        # approval).
        report = rollback(conn, sel, on_conflict="skip", require_approval=False)
        timings["undo"] = time.monotonic() - t0
        say(render.rollback(report))

        t0 = time.monotonic()
        mismatches = _verify(conn)
        timings["check every row"] = time.monotonic() - t0
        ok = not any(mismatches.values())
        say("\n== check of every row against the expected state ==")
        for t in TABLES:
            say(f"  {t}: {'ok' if not mismatches[t] else f'{mismatches[t]} rows differ'}")
        say("\n== timings ==")
        for k, v in timings.items():
            say(f"  {k}: {v:.2f} s")
        say(
            "\nevery row is as it should be: the deploy's damage is undone, every legitimate "
            "write kept"
            if ok
            else "\nMISMATCH: some rows are not as expected"
        )
        return {
            "ok": ok,
            "rows": total,
            "timings": timings,
            "mismatches": mismatches,
            "plan": plan.to_dict(),
            "undo": report.to_dict(),
        }
    finally:
        for c in (conn, bad_conn, legit_conn, shadow):
            c.close()
