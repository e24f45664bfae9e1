"""Undo engine: exact end states for every row an undo touches (or must not touch).

Rows are compared through their text form (`t::text`), so every column, NULLs
and exact values included, is checked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from recovery import (
    ConflictError,
    RecoveryError,
    Selector,
    disable_capture,
    enable_capture,
    list_operations,
    resume_rollback,
    rollback,
)

BAD = Selector(tags=("bad",))


# -- helpers ---------------------------------------------------------------------


def snap(conn: psycopg.Connection, table: str) -> list[str]:
    """Every row of a table as text, ordered by its first column (then the whole row),
    read in a fresh transaction."""
    conn.rollback()
    out = [r[0] for r in conn.execute(f"SELECT row_::text, row_.* FROM {table} row_ ORDER BY 2, 1")]
    conn.rollback()
    return out


def bad(sql_exec, *stmts: str, tag: str = "bad") -> None:  # type: ignore[no-untyped-def]
    """Run statements as one tagged transaction (the bad change)."""
    sql_exec(f"SET recovery.tag = '{tag}'; " + "; ".join(stmts))


def op_row(conn: psycopg.Connection, op_id: int) -> tuple:  # type: ignore[type-arg]
    conn.rollback()
    row = conn.execute(
        "SELECT status, tag, summary, error FROM _recovery.operations WHERE op_id = %s", [op_id]
    ).fetchone()
    conn.rollback()
    assert row is not None
    return row


def undo_writes(conn: psycopg.Connection, op_id: int) -> int:
    conn.rollback()
    n = conn.execute(
        "SELECT count(*) FROM _recovery.stmt WHERE tag = %s", [f"recovery-undo-{op_id}"]
    ).fetchone()[0]  # type: ignore[index]
    conn.rollback()
    return int(n)


def counts(report) -> dict[str, tuple[int, int, int, int, int]]:  # type: ignore[no-untyped-def]
    """Per table: (reinsert, restore, delete, already, conflicts)."""
    return {
        t.table: (t.reinsert, t.restore, t.delete, t.already, t.conflicts) for t in report.tables
    }


@pytest.fixture
def t(conn, sql_exec):  # type: ignore[no-untyped-def]
    """Table t, rows (1,v1,10) .. (5,v5,50), captured."""
    sql_exec("CREATE TABLE t (id int PRIMARY KEY, v text, n int)")
    sql_exec("INSERT INTO t SELECT g, 'v' || g, g * 10 FROM generate_series(1, 5) g")
    enable_capture(conn, ["t"])
    return snap(conn, "t")


ORIG = ["(1,v1,10)", "(2,v2,20)", "(3,v3,30)", "(4,v4,40)", "(5,v5,50)"]


@pytest.fixture
def fk(conn, sql_exec):  # type: ignore[no-untyped-def]
    """Parent p (1, 2) and child c (11, 12 of 1; 21 of 2), ON DELETE CASCADE, captured."""
    sql_exec("CREATE TABLE p (id int PRIMARY KEY, name text)")
    sql_exec(
        "CREATE TABLE c (id int PRIMARY KEY,"
        " pid int NOT NULL REFERENCES p ON DELETE CASCADE, x text)"
    )
    sql_exec("INSERT INTO p VALUES (1, 'one'), (2, 'two')")
    sql_exec("INSERT INTO c VALUES (11, 1, 'a'), (12, 1, 'b'), (21, 2, 'c')")
    enable_capture(conn, ["p", "c"])


# -- 1. net inverse (the plain cases are data: tests/scenarios/, tests/test_scenarios.py) --


def test_primary_key_swap(conn, sql_exec):
    sql_exec("CREATE TABLE s (id int PRIMARY KEY DEFERRABLE, v text)")
    sql_exec("INSERT INTO s VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    enable_capture(conn, ["s"])
    bad(sql_exec, "UPDATE s SET id = 3 - id WHERE id IN (1, 2)")
    assert snap(conn, "s") == ["(1,two)", "(2,one)", "(3,three)"]
    rollback(conn, BAD)
    assert snap(conn, "s") == ["(1,one)", "(2,two)", "(3,three)"]


def test_array_json_and_null_values(conn, sql_exec):
    sql_exec(
        "CREATE TABLE a (id int PRIMARY KEY, tags text[], js json, pt point,"
        " amount numeric, note text)"
    )
    sql_exec(
        "INSERT INTO a VALUES"
        " (1, '{a,b}', '{\"k\": 1}', '(1,2)', 1.0, NULL),"
        " (2, NULL, '[1,  2]', NULL, -0.0, 'x'),"
        " (3, '{}', 'null', '(0,0)', 1.50, '')"
    )
    enable_capture(conn, ["a"])
    before = snap(conn, "a")
    bad(
        sql_exec,
        "UPDATE a SET tags = '{c,d,e}', js = '{\"k\":1}', amount = 1.00 WHERE id = 1",
        "UPDATE a SET tags = '{z}', amount = 0, pt = '(3,4)' WHERE id = 2",
        "UPDATE a SET tags = NULL, note = NULL WHERE id = 3",
    )
    bad(sql_exec, "UPDATE a SET tags = tags || '{f}'::text[] WHERE id = 1")
    rollback(conn, BAD)
    assert snap(conn, "a") == before


def test_array_of_same_length_is_restored(conn, sql_exec):
    # array_agg() of equal-length arrays silently gives a 2-D array whose [1] is NULL
    sql_exec("CREATE DOMAIN tagset AS text[] CHECK (cardinality(VALUE) < 5)")
    sql_exec("CREATE TABLE a (id int PRIMARY KEY, tags text[], ints int[], d tagset)")
    sql_exec("INSERT INTO a VALUES (1, '{a,b}', '{{1,2},{3,4}}', '{x}'), (2, '{c}', '{5}', '{}')")
    enable_capture(conn, ["a"])
    before = snap(conn, "a")
    bad(
        sql_exec,
        "UPDATE a SET tags = '{y,z}', ints = '{{0,0},{0,0}}', d = '{q}' WHERE id = 1",
        "DELETE FROM a WHERE id = 2",
    )
    rollback(conn, BAD)
    assert snap(conn, "a") == before


def test_generated_identity_composite_and_partitioned(conn, sql_exec):
    sql_exec(
        "CREATE TABLE g (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a int,"
        " b int GENERATED ALWAYS AS (a * 2) STORED)"
    )
    sql_exec("INSERT INTO g (a) VALUES (1), (2), (3)")
    sql_exec("CREATE TABLE k (a int, b text, v text, PRIMARY KEY (a, b))")
    sql_exec("INSERT INTO k VALUES (1, 'x', 'one'), (1, 'y', 'two'), (2, 'x', 'three')")
    sql_exec(
        "CREATE TABLE pt (id int, region text, v text, PRIMARY KEY (id, region))"
        " PARTITION BY LIST (region)"
    )
    sql_exec(
        "CREATE TABLE pt_eu PARTITION OF pt FOR VALUES IN ('eu');"
        " CREATE TABLE pt_us PARTITION OF pt FOR VALUES IN ('us')"
    )
    sql_exec("INSERT INTO pt VALUES (1, 'eu', 'a'), (2, 'us', 'b')")
    enable_capture(conn, ["g", "k", "pt"])
    before = [snap(conn, x) for x in ("g", "k", "pt")]
    bad(
        sql_exec,
        "UPDATE g SET a = a + 10 WHERE id = 1",
        "DELETE FROM g WHERE id = 2",
        "INSERT INTO g (a) VALUES (9)",
        "UPDATE k SET b = 'z' WHERE a = 1 AND b = 'x'",
        "UPDATE k SET v = 'bad' WHERE a = 2",
        "DELETE FROM k WHERE b = 'y'",
        "UPDATE pt SET region = 'us', v = 'moved' WHERE id = 1",  # moves to another partition
        "UPDATE pt_us SET v = 'x' WHERE id = 2",
    )  # written via the partition
    rollback(conn, BAD)
    assert [snap(conn, x) for x in ("g", "k", "pt")] == before


def test_quoted_names_and_other_schema(conn, sql_exec):
    sql_exec(
        'CREATE SCHEMA "My Schema";'
        ' CREATE TABLE "My Schema"."Order Items" ("Id" int PRIMARY KEY, "select" text,'
        ' "Value" int);'
        ' CREATE TABLE "My Schema"."Kid" (k int PRIMARY KEY,'
        ' "Parent Id" int REFERENCES "My Schema"."Order Items" ON DELETE CASCADE)'
    )
    sql_exec(
        "INSERT INTO \"My Schema\".\"Order Items\" VALUES (1, 'a', 1), (2, 'b', 2);"
        ' INSERT INTO "My Schema"."Kid" VALUES (1, 1)'
    )
    tables = ['"My Schema"."Order Items"', '"My Schema"."Kid"']
    enable_capture(conn, tables)
    before = [snap(conn, x) for x in tables]
    bad(
        sql_exec,
        'UPDATE "My Schema"."Order Items" SET "select" = \'x\' WHERE "Id" = 2',
        'DELETE FROM "My Schema"."Order Items" WHERE "Id" = 1',
        'INSERT INTO "My Schema"."Order Items" VALUES (3, \'c\', 3)',
    )
    rollback(conn, BAD)
    assert [snap(conn, x) for x in tables] == before


def test_table_with_chosen_key(conn, sql_exec):
    sql_exec("CREATE TABLE nk (code text NOT NULL UNIQUE, v text)")
    sql_exec("INSERT INTO nk VALUES ('a', '1'), ('b', '2')")
    enable_capture(conn, ["nk"], key=["code"])
    before = snap(conn, "nk")
    bad(
        sql_exec,
        "UPDATE nk SET v = 'x'",
        "DELETE FROM nk WHERE code = 'a'",
        "INSERT INTO nk VALUES ('c', '3')",
    )
    rollback(conn, BAD)
    assert snap(conn, "nk") == before


def test_columns_retyped_renamed_dropped_after_the_bad_change(conn, sql_exec, t):
    bad(sql_exec, "UPDATE t SET v = 'bad', n = 0 WHERE id = 1", "DELETE FROM t WHERE id = 2")
    sql_exec("ALTER TABLE t ALTER COLUMN n TYPE numeric(6,1)")
    sql_exec("ALTER TABLE t RENAME COLUMN v TO label")
    rollback(conn, BAD)
    assert snap(conn, "t") == [
        "(1,v1,10.0)",
        "(2,v2,20.0)",
        "(3,v3,30.0)",
        "(4,v4,40.0)",
        "(5,v5,50.0)",
    ]
    bad(
        sql_exec,
        "UPDATE t SET label = 'bad', n = 0 WHERE id = 1",
        "DELETE FROM t WHERE id = 2",
        tag="bad2",
    )
    sql_exec("ALTER TABLE t DROP COLUMN n")
    rollback(conn, Selector(tags=("bad2",)))
    assert snap(conn, "t") == ["(1,v1)", "(2,v2)", "(3,v3)", "(4,v4)", "(5,v5)"]


# -- 2. column level ---------------------------------------------------------------


# -- 3. conflicts --------------------------------------------------------------------


@pytest.fixture
def same_column(conn, sql_exec, t):  # type: ignore[no-untyped-def]
    """Bad change sets v of 1 and 2 and n of 1; a later legit write sets v of 1 again."""
    bad(sql_exec, "UPDATE t SET v = 'bad' WHERE id IN (1, 2)", "UPDATE t SET n = 0 WHERE id = 1")
    sql_exec("UPDATE t SET v = 'legit' WHERE id = 1")
    return snap(conn, "t")


def test_conflict_fail_changes_nothing(conn, same_column):
    assert same_column == ["(1,legit,0)", "(2,bad,20)", *ORIG[2:]]
    with pytest.raises(ConflictError) as exc:
        rollback(conn, BAD)
    assert snap(conn, "t") == same_column
    report = exc.value.report
    assert report.conflicts == 1
    (ex,) = report.tables[0].conflict_examples
    assert ex["key"] == {"id": 1}
    assert ex["columns"] == ["v"]
    assert ex["values"] == {"v": {"restore_to": "v1", "left_by_change": "bad", "now": "legit"}}
    status, _tag, _summary, error = op_row(conn, report.op_id)
    assert (status, error) == ("refused", "conflicts")
    assert undo_writes(conn, report.op_id) == 0


def test_legit_write_between_bad_changes(conn, sql_exec, t):
    bad(sql_exec, "UPDATE t SET v = 'bad1' WHERE id = 1")
    sql_exec("UPDATE t SET v = 'legit' WHERE id = 1")
    bad(sql_exec, "UPDATE t SET n = 0 WHERE id = 1")
    with pytest.raises(ConflictError) as exc:
        rollback(conn, BAD)
    (ex,) = exc.value.report.tables[0].conflict_examples
    assert (ex["key"], ex["columns"]) == ({"id": 1}, ["v"])
    assert snap(conn, "t") == ["(1,legit,0)", *ORIG[1:]]
    rollback(conn, BAD, on_conflict="skip")
    assert snap(conn, "t") == ["(1,legit,10)", *ORIG[1:]]


def test_uncaptured_write_is_a_conflict(conn, sql_exec, t):
    bad(sql_exec, "UPDATE t SET v = 'bad' WHERE id IN (1, 2)")
    disable_capture(conn, ["t"])
    sql_exec("UPDATE t SET v = 'hidden' WHERE id = 1")
    sql_exec("UPDATE t SET n = 7 WHERE id = 2")  # other column: no conflict
    enable_capture(conn, ["t"])
    state = snap(conn, "t")
    with pytest.raises(ConflictError) as exc:
        rollback(conn, BAD)
    assert snap(conn, "t") == state
    (ex,) = exc.value.report.tables[0].conflict_examples
    assert (ex["key"], ex["columns"]) == ({"id": 1}, ["v"])
    rollback(conn, BAD, on_conflict="skip")
    assert snap(conn, "t") == ["(1,hidden,10)", "(2,v2,7)", *ORIG[2:]]


def test_row_deleted_later(conn, sql_exec, t):
    bad(sql_exec, "UPDATE t SET v = 'bad' WHERE id IN (1, 2)")
    sql_exec("DELETE FROM t WHERE id = 1")
    with pytest.raises(ConflictError) as exc:
        rollback(conn, BAD)
    (ex,) = exc.value.report.tables[0].conflict_examples
    assert ex["key"] == {"id": 1}
    assert snap(conn, "t") == ["(2,bad,20)", *ORIG[2:]]
    rollback(conn, BAD, on_conflict="skip")
    assert snap(conn, "t") == ORIG[1:]
    rollback(conn, BAD, on_conflict="overwrite")
    assert snap(conn, "t") == ORIG


def test_row_reinserted_later_at_deleted_key(conn, sql_exec, t):
    bad(sql_exec, "DELETE FROM t WHERE id IN (2, 3, 4)")
    sql_exec("INSERT INTO t VALUES (2, 'fresh', 2)")
    disable_capture(conn, ["t"])
    sql_exec("INSERT INTO t VALUES (3, 'v3', 30)")  # identical to what the undo would restore
    enable_capture(conn, ["t"])
    with pytest.raises(ConflictError) as exc:
        rollback(conn, BAD)
    (ex,) = exc.value.report.tables[0].conflict_examples
    assert ex["key"] == {"id": 2} and set(ex["columns"]) == {"v", "n"}
    assert snap(conn, "t") == ["(1,v1,10)", "(2,fresh,2)", "(3,v3,30)", "(5,v5,50)"]
    report = rollback(conn, BAD, on_conflict="skip")
    assert counts(report) == {"public.t": (1, 0, 0, 1, 1)}
    assert snap(conn, "t") == ["(1,v1,10)", "(2,fresh,2)", "(3,v3,30)", "(4,v4,40)", "(5,v5,50)"]
    rollback(conn, BAD, on_conflict="overwrite")
    assert snap(conn, "t") == ORIG


def test_inserted_row_edited_later(conn, sql_exec, t):
    bad(sql_exec, "INSERT INTO t VALUES (10, 'bad', 1), (11, 'bad', 2)")
    sql_exec("UPDATE t SET n = 5 WHERE id = 10")
    with pytest.raises(ConflictError):
        rollback(conn, BAD)
    rollback(conn, BAD, on_conflict="skip")
    assert snap(conn, "t") == [*ORIG, "(10,bad,5)"]
    rollback(conn, BAD, on_conflict="overwrite")
    assert snap(conn, "t") == ORIG


# -- 4. foreign keys -----------------------------------------------------------------


def test_parent_and_cascaded_children_come_back(conn, sql_exec, fk):
    before_p, before_c = snap(conn, "p"), snap(conn, "c")
    bad(sql_exec, "DELETE FROM p WHERE id = 1")
    assert snap(conn, "c") == ["(21,2,c)"]
    report = rollback(conn, BAD)
    assert snap(conn, "p") == before_p
    assert snap(conn, "c") == before_c
    assert counts(report) == {"public.p": (1, 0, 0, 0, 0), "public.c": (2, 0, 0, 0, 0)}


def test_children_deleted_before_parent(conn, sql_exec, fk):
    bad(
        sql_exec,
        "INSERT INTO p VALUES (3, 'three')",
        "INSERT INTO c VALUES (31, 3, 'x'), (32, 3, 'y')",
        "UPDATE c SET pid = 3 WHERE id = 21",
    )
    rollback(conn, BAD)
    assert snap(conn, "p") == ["(1,one)", "(2,two)"]
    assert snap(conn, "c") == ["(11,1,a)", "(12,1,b)", "(21,2,c)"]


def test_children_moved_to_deleted_parent_come_back(conn, sql_exec, fk):
    # The bad change moves children to a new parent, then deletes the old parent.
    bad(
        sql_exec,
        "INSERT INTO p VALUES (3, 'three')",
        "UPDATE c SET pid = 3 WHERE pid = 1",
        "DELETE FROM p WHERE id = 1",
    )
    rollback(conn, BAD)
    assert snap(conn, "p") == ["(1,one)", "(2,two)"]
    assert snap(conn, "c") == ["(11,1,a)", "(12,1,b)", "(21,2,c)"]


def test_key_change_with_on_update_cascade(conn, sql_exec):
    sql_exec("CREATE TABLE p (id int PRIMARY KEY, name text)")
    sql_exec("CREATE TABLE c (id int PRIMARY KEY, pid int REFERENCES p ON UPDATE CASCADE)")
    sql_exec("INSERT INTO p VALUES (1, 'one'), (2, 'two'); INSERT INTO c VALUES (11, 1), (21, 2)")
    enable_capture(conn, ["p", "c"])
    bad(sql_exec, "UPDATE p SET id = 100 WHERE id = 1")
    assert snap(conn, "c") == ["(11,100)", "(21,2)"]
    rollback(conn, BAD)
    assert snap(conn, "p") == ["(1,one)", "(2,two)"]
    assert snap(conn, "c") == ["(11,1)", "(21,2)"]


def test_later_child_of_a_parent_the_bad_change_inserted(conn, sql_exec, fk):
    # Deleting the parent would cascade to (or be refused by) a legitimate later child.
    bad(
        sql_exec,
        "INSERT INTO p VALUES (3, 'three'), (4, 'four')",
        "INSERT INTO c VALUES (41, 4, 'bad child')",
    )
    sql_exec("INSERT INTO c VALUES (31, 3, 'legit')")
    state = (snap(conn, "p"), snap(conn, "c"))
    with pytest.raises(ConflictError) as exc:
        rollback(conn, BAD)
    assert (snap(conn, "p"), snap(conn, "c")) == state
    (ex,) = [e for t in exc.value.report.tables for e in t.conflict_examples]
    assert (ex["key"], ex["columns"]) == ({"id": 3}, ["(referenced by c)"])
    rollback(conn, BAD, on_conflict="skip")
    assert snap(conn, "p") == ["(1,one)", "(2,two)", "(3,three)"]
    assert snap(conn, "c") == ["(11,1,a)", "(12,1,b)", "(21,2,c)", "(31,3,legit)"]


def test_self_referencing_tree(conn, sql_exec):
    sql_exec("CREATE TABLE tree (id int PRIMARY KEY, parent int REFERENCES tree, name text)")
    sql_exec("INSERT INTO tree VALUES (1, NULL, 'root'), (2, 1, 'kid')")
    enable_capture(conn, ["tree"])
    bad(
        sql_exec,
        "INSERT INTO tree VALUES (10, 1, 'bad'), (11, 10, 'bad kid'), (20, 1, 'bad2')",
        "DELETE FROM tree WHERE id = 2",
    )
    sql_exec("INSERT INTO tree VALUES (21, 20, 'legit kid of bad2')")
    with pytest.raises(ConflictError):
        rollback(conn, BAD)
    report = rollback(conn, BAD, on_conflict="skip")
    assert report.conflicts == 1
    assert snap(conn, "tree") == [
        "(1,,root)",
        "(2,1,kid)",
        "(20,1,bad2)",
        '(21,20,"legit kid of bad2")',
    ]


@pytest.mark.parametrize("batch_size", [None, 1])
def test_tree_rows_come_back_and_go_in_dependency_order(conn, sql_exec, batch_size):
    sql_exec("CREATE TABLE tree (id int PRIMARY KEY, parent int REFERENCES tree, name text)")
    sql_exec("INSERT INTO tree VALUES (1, NULL, 'root'), (5, 1, 'kid'), (3, 5, 'grandkid')")
    enable_capture(conn, ["tree"])
    before = snap(conn, "tree")
    bad(
        sql_exec,
        "INSERT INTO tree VALUES (10, 1, 'bad'), (11, 10, 'bad kid')",
        "DELETE FROM tree WHERE id IN (3, 5)",
    )
    rollback(conn, BAD, batch_size=batch_size)
    assert snap(conn, "tree") == before


def test_foreign_keys_batched(conn, sql_exec, fk):
    before = (snap(conn, "p"), snap(conn, "c"))
    bad(
        sql_exec,
        "DELETE FROM p WHERE id = 1",
        "INSERT INTO p VALUES (3, 'three')",
        "INSERT INTO c VALUES (31, 3, 'x'), (32, 3, 'y')",
    )
    report = rollback(conn, BAD, batch_size=1)
    assert (snap(conn, "p"), snap(conn, "c")) == before
    assert report.batches == 6


def test_unique_values_moved_by_the_bad_change(conn, sql_exec):
    # Re-inserting a row whose unique value a row of the bad change now holds: the undo
    # either gets it exactly right or fails whole, changing nothing.
    sql_exec("CREATE TABLE u (id int PRIMARY KEY, email text UNIQUE)")
    sql_exec("INSERT INTO u VALUES (1, 'a@x'), (2, 'b@x')")
    enable_capture(conn, ["u"])
    bad(sql_exec, "DELETE FROM u WHERE id = 1", "INSERT INTO u VALUES (10, 'a@x')")
    state = snap(conn, "u")
    try:
        report = rollback(conn, BAD)
    except psycopg.errors.UniqueViolation:
        assert snap(conn, "u") == state
        conn.rollback()
        assert conn.execute("SELECT status FROM _recovery.operations").fetchall() == [("failed",)]
        assert undo_writes(conn, 1) == 0
        conn.rollback()
    else:
        assert report.status == "done"
        assert snap(conn, "u") == ["(1,a@x)", "(2,b@x)"]


# -- 5. the table's own triggers -------------------------------------------------------

TRIGGERED = """
CREATE TABLE doc (id int PRIMARY KEY, body text, rev int NOT NULL DEFAULT 1,
                  updated_at timestamptz NOT NULL DEFAULT '2020-01-01 00:00:00+00');
CREATE FUNCTION doc_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN NEW.rev := OLD.rev + 1; ELSE NEW.rev := 1; END IF;
  NEW.updated_at := clock_timestamp();
  RETURN NEW;
END $$;
CREATE TRIGGER doc_touch BEFORE INSERT OR UPDATE ON doc FOR EACH ROW EXECUTE FUNCTION doc_touch();
ALTER TABLE doc DISABLE TRIGGER doc_touch;
INSERT INTO doc VALUES (1, 'a', 5, '2021-01-01 00:00:00+00'), (2, 'b', 7, '2021-02-01 00:00:00+00');
ALTER TABLE doc ENABLE TRIGGER doc_touch;
"""


def test_own_triggers_do_not_alter_restored_rows(conn, sql_exec):
    sql_exec(TRIGGERED)
    enable_capture(conn, ["doc"])
    before = snap(conn, "doc")
    assert before == ['(1,a,5,"2021-01-01 00:00:00+00")', '(2,b,7,"2021-02-01 00:00:00+00")']
    bad(
        sql_exec,
        "UPDATE doc SET body = 'broken' WHERE id = 1",
        "DELETE FROM doc WHERE id = 2",
        "INSERT INTO doc (id, body) VALUES (3, 'new')",
    )
    after_bad = snap(conn, "doc")
    assert after_bad[0].startswith("(1,broken,6,")
    rollback(conn, BAD)
    assert snap(conn, "doc") == before
    conn.rollback()
    enabled = conn.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'doc_touch'").fetchone()
    conn.rollback()
    assert enabled == ("O",)
    sql_exec("UPDATE doc SET body = 'later' WHERE id = 1")  # the trigger fires again
    assert snap(conn, "doc")[0].startswith("(1,later,6,")


# -- 6 / 7. undo twice, undo of the undo -------------------------------------------------


def _mixed_bad_change(sql_exec) -> None:  # type: ignore[no-untyped-def]
    bad(
        sql_exec,
        "UPDATE t SET v = 'bad' WHERE id <= 2",
        "DELETE FROM t WHERE id = 3",
        "INSERT INTO t VALUES (6, 'new', 60)",
        "UPDATE t SET id = 40 WHERE id = 4",
    )


def test_undo_twice_changes_nothing_the_second_time(conn, sql_exec, t):
    _mixed_bad_change(sql_exec)
    sql_exec("UPDATE t SET n = 55 WHERE id = 5")
    first = rollback(conn, BAD)
    state = snap(conn, "t")
    assert state == [*ORIG[:4], "(5,v5,55)"]
    second = rollback(conn, BAD)
    assert snap(conn, "t") == state
    assert second.status == "done"
    (res,) = second.tables
    assert (res.reinsert, res.restore, res.delete, res.conflicts) == (0, 0, 0, 0)
    assert res.already == 6  # keys 1, 2, 3, 4, 6, 40
    assert (res.inserted, res.updated, res.deleted) == (0, 0, 0)
    assert undo_writes(conn, second.op_id) == 0
    assert undo_writes(conn, first.op_id) > 0


def test_undo_of_the_undo_restores_the_bad_state(conn, sql_exec, t):
    _mixed_bad_change(sql_exec)
    bad_state = snap(conn, "t")
    report = rollback(conn, BAD)
    assert snap(conn, "t") == ORIG
    status, tag, _summary, _error = op_row(conn, report.op_id)
    assert (status, tag) == ("done", f"recovery-undo-{report.op_id}")
    again = rollback(conn, Selector(tags=(report.undo_tag,)))
    assert snap(conn, "t") == bad_state
    # and that one can be undone as well
    rollback(conn, Selector(tags=(again.undo_tag,)))
    assert snap(conn, "t") == ORIG


def test_undo_of_the_undo_with_fk_and_triggers(conn, sql_exec, fk):
    sql_exec(TRIGGERED)
    enable_capture(conn, ["doc"])
    bad(sql_exec, "DELETE FROM p WHERE id = 1", "UPDATE doc SET body = 'x'")
    bad_state = (snap(conn, "p"), snap(conn, "c"), snap(conn, "doc"))
    report = rollback(conn, BAD)
    rollback(conn, Selector(tags=(report.undo_tag,)))
    assert (snap(conn, "p"), snap(conn, "c"), snap(conn, "doc")) == bad_state


# -- 8. selectors ----------------------------------------------------------------------------


def _txid(sql_exec, tag: str) -> int:  # type: ignore[no-untyped-def]
    (row,) = sql_exec("SELECT DISTINCT txid FROM _recovery.stmt WHERE tag = %s", [tag])
    return int(row[0])


def test_select_by_txid(conn, sql_exec, t):
    bad(sql_exec, "UPDATE t SET v = 'one' WHERE id = 1", tag="a")
    bad(sql_exec, "UPDATE t SET v = 'two' WHERE id = 2", tag="b")
    rollback(conn, Selector(txids=(_txid(sql_exec, "a"),)))
    assert snap(conn, "t") == ["(1,v1,10)", "(2,two,20)", *ORIG[2:]]


def test_select_by_time_window(conn, sql_exec, t):
    sql_exec("UPDATE t SET v = 'early' WHERE id = 1")
    (since,) = sql_exec("SELECT clock_timestamp()::text")[0]
    sql_exec("UPDATE t SET v = 'bad' WHERE id IN (2, 3)")
    sql_exec("DELETE FROM t WHERE id = 4")
    (until,) = sql_exec("SELECT clock_timestamp()::text")[0]
    sql_exec("UPDATE t SET v = 'late' WHERE id = 5")
    rollback(conn, Selector(since=since, until=until))
    assert snap(conn, "t") == ["(1,early,10)", *ORIG[1:4], "(5,late,50)"]


def test_select_by_table_follows_cascades(conn, sql_exec, fk, t):
    sql_exec("DELETE FROM p WHERE id = 1; UPDATE t SET v = 'other' WHERE id = 1")
    report = rollback(conn, Selector(tables=("p",)))
    assert {r.table for r in report.tables} == {"public.p", "public.c"}
    assert snap(conn, "p") == ["(1,one)", "(2,two)"]
    assert snap(conn, "c") == ["(11,1,a)", "(12,1,b)", "(21,2,c)"]
    assert snap(conn, "t") == ["(1,other,10)", *ORIG[1:]]


def test_select_by_user(conn, sql_exec, t):
    sql_exec(
        "DO $$ BEGIN CREATE ROLE recovery_test_deployer; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    sql_exec("GRANT ALL ON t TO recovery_test_deployer")
    sql_exec(
        "SET SESSION AUTHORIZATION recovery_test_deployer; "
        "UPDATE t SET v = 'deployer' WHERE id IN (1, 2)"
    )
    sql_exec("UPDATE t SET v = 'admin' WHERE id = 3")
    rollback(conn, Selector(users=("recovery_test_deployer",)))
    assert snap(conn, "t") == [*ORIG[:2], "(3,admin,30)", *ORIG[3:]]


def test_select_by_app(conn, sql_exec, t):
    sql_exec("SET application_name = 'bad-worker'; UPDATE t SET v = 'w' WHERE id = 1")
    sql_exec("SET application_name = 'web'; UPDATE t SET v = 'web' WHERE id = 2")
    rollback(conn, Selector(apps=("bad-worker",)))
    assert snap(conn, "t") == ["(1,v1,10)", "(2,web,20)", *ORIG[2:]]


def test_selector_errors(conn, sql_exec, t):
    bad(sql_exec, "UPDATE t SET v = 'bad' WHERE id = 1")
    state = snap(conn, "t")
    with pytest.raises(RecoveryError, match="no captured change has application 'nobody'"):
        rollback(conn, Selector(apps=("nobody",)))
    with pytest.raises(RecoveryError, match="no captured change matches"):
        rollback(conn, Selector(tags=("bad",), since="2099-01-01"))
    with pytest.raises(RecoveryError, match="no captured change has tag 'nope'"):
        rollback(conn, Selector(tags=("nope",)))
    with pytest.raises(RecoveryError, match="no selector"):
        rollback(conn, Selector())
    assert snap(conn, "t") == state
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM _recovery.operations").fetchone() == (0,)
    conn.rollback()


# -- 9. batches, interruption, resume -------------------------------------------------------


def _twenty(sql_exec, name: str) -> None:  # type: ignore[no-untyped-def]
    sql_exec(f"CREATE TABLE {name} (id int PRIMARY KEY, v text, n int)")
    sql_exec(f"INSERT INTO {name} SELECT g, 'v' || g, g FROM generate_series(1, 20) g")


def _damage(sql_exec, name: str, tag: str) -> None:  # type: ignore[no-untyped-def]
    bad(
        sql_exec,
        f"UPDATE {name} SET v = 'bad' WHERE id <= 8",
        f"DELETE FROM {name} WHERE id BETWEEN 9 AND 14",
        f"INSERT INTO {name} SELECT g, 'new', g FROM generate_series(21, 26) g",
        f"UPDATE {name} SET id = id + 100 WHERE id IN (15, 16)",
        tag=tag,
    )
    sql_exec(f"UPDATE {name} SET n = -n WHERE id IN (1, 2)")  # kept
    sql_exec(f"UPDATE {name} SET v = 'legit' WHERE id IN (3, 21)")  # conflicts:
    sql_exec(f"INSERT INTO {name} VALUES (9, 'again', 9)")  # re-inserted since
    sql_exec(f"DELETE FROM {name} WHERE id = 4")  # deleted since


@pytest.mark.parametrize("on_conflict", ["skip", "overwrite"])
def test_batched_equals_single_transaction(conn, sql_exec, on_conflict):
    for name in ("single", "batched"):
        _twenty(sql_exec, name)
    enable_capture(conn, ["single", "batched"])
    for name in ("single", "batched"):
        _damage(sql_exec, name, name)
    one = rollback(conn, Selector(tags=("single",)), on_conflict=on_conflict)
    many = rollback(conn, Selector(tags=("batched",)), on_conflict=on_conflict, batch_size=2)
    assert snap(conn, "batched") == snap(conn, "single")
    assert many.batches >= 10
    assert op_row(conn, many.op_id)[0] == "done"
    expected = [f"({i},v{i},{i})" for i in range(1, 21)]
    expected[0], expected[1] = "(1,v1,-1)", "(2,v2,-2)"
    if on_conflict == "skip":
        expected[2] = "(3,legit,3)"
        expected[8] = "(9,again,9)"
        del expected[3]
        expected.append("(21,legit,21)")
    assert snap(conn, "single") == expected
    assert [(t.inserted, t.updated, t.deleted) for t in one.tables] == [
        (t.inserted, t.updated, t.deleted) for t in many.tables
    ]


def test_batched_interrupted_conflict_then_resume_with_skip(conn, sql_exec):
    sql_exec("CREATE TABLE b (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO b SELECT g, 'v' || g FROM generate_series(1, 10) g")
    enable_capture(conn, ["b"])
    orig = snap(conn, "b")
    bad(sql_exec, "UPDATE b SET v = 'bad'")
    done: list[int] = []

    def progress(_table: str, n: int) -> None:
        done.append(n)
        if len(done) == 2:
            raise KeyboardInterrupt  # after the second committed batch

    with pytest.raises(KeyboardInterrupt):
        rollback(conn, BAD, batch_size=3, progress=progress)
    (op_id,) = [r[0] for r in sql_exec("SELECT op_id FROM _recovery.operations")]
    assert op_row(conn, op_id)[0] == "stopped"
    assert snap(conn, "b") == [*orig[:6], "(7,bad)", "(8,bad)", "(9,bad)", "(10,bad)"]
    sql_exec("UPDATE b SET v = 'legit' WHERE id = 9")  # while the undo was stopped
    with pytest.raises(ConflictError):
        resume_rollback(conn, op_id)
    assert op_row(conn, op_id)[0] == "stopped"
    assert snap(conn, "b") == [*orig[:6], "(7,bad)", "(8,bad)", "(9,legit)", "(10,bad)"]
    report = resume_rollback(conn, op_id, on_conflict="skip")
    assert snap(conn, "b") == [*orig[:8], "(9,legit)", orig[9]]
    assert op_row(conn, op_id)[0] == "done"
    assert report.tables[0].updated == 9


def _cli(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run(
        [sys.executable, "-m", "recovery", *args], capture_output=True, text=True, timeout=60
    )


def test_batched_undo_killed_then_resumed(conn, db_url, sql_exec, tmp_path):
    rows = 400
    sql_exec("CREATE TABLE big (id int PRIMARY KEY, v text, n int)")
    sql_exec(f"INSERT INTO big SELECT g, 'v' || g, g FROM generate_series(1, {rows}) g")
    enable_capture(conn, ["big"])
    original = snap(conn, "big")
    bad(
        sql_exec,
        "UPDATE big SET v = 'bad' WHERE id % 2 = 0",
        "DELETE FROM big WHERE id % 5 = 0",
        f"INSERT INTO big SELECT g, 'new', g FROM generate_series({rows + 1}, {rows + 100}) g",
        tag="bulk",
    )
    sql_exec("UPDATE big SET n = -1 WHERE id = 2")
    expected = [r if r != "(2,v2,2)" else "(2,v2,-1)" for r in original]

    err = tmp_path / "stderr"
    op_id = None
    with (
        err.open("w") as errf,
        psycopg.connect(db_url, autocommit=True) as watcher,
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recovery",
                "rollback",
                "--tag",
                "bulk",
                "--batch-size",
                "1",
                "--yes",
                "--db",
                db_url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=errf,
        ) as proc,
    ):
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                row = watcher.execute(
                    "SELECT op_id, (summary->>'batches')::int FROM _recovery.operations "
                    "WHERE kind = 'rollback' ORDER BY op_id DESC LIMIT 1"
                ).fetchone()
                if row and row[1] and row[1] > 0:
                    op_id = row[0]
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                assert proc.poll() is None, err.read_text()
                time.sleep(0.005)
        finally:
            if proc.poll() is None and op_id is None:
                proc.kill()
    assert op_id is not None and proc.returncode == -signal.SIGKILL
    status, _tag, summary, _error = op_row(conn, op_id)
    assert status == "applying"
    deadline = time.monotonic() + 10  # until the server let the dead session go
    while not next(o for o in list_operations(conn) if o.op_id == op_id).interrupted:
        assert time.monotonic() < deadline, "the killed undo never showed as interrupted"
        time.sleep(0.05)
    partial = snap(conn, "big")
    assert partial != expected  # really interrupted half way

    res = _cli("rollback", "--resume", str(op_id), "--yes", "--db", db_url)
    assert res.returncode == 0, res.stderr
    assert snap(conn, "big") == expected
    status, tag, summary, _error = op_row(conn, op_id)
    assert (status, tag) == ("done", f"recovery-undo-{op_id}")
    assert not next(o for o in list_operations(conn) if o.op_id == op_id).interrupted
    assert summary["batches"] == rows // 2 - rows // 10 + rows // 5 + 100  # one row per batch
    with pytest.raises(RecoveryError, match="complete already"):
        resume_rollback(conn, op_id)


# -- 10. dry run, --json, --sql, operations ------------------------------------------------


def test_operations_leave_the_connection_idle(conn, sql_exec, t):
    """After an undo, a snapshot and a restore the caller's connection is not left
    idle in a transaction (the operation's lock is taken and let go outside one)."""
    from recovery import snapshot as snapshots
    from recovery.restore import restore

    idle = psycopg.pq.TransactionStatus.IDLE
    _mixed_bad_change(sql_exec)
    rollback(conn, BAD)
    assert conn.info.transaction_status == idle
    snapshots.create(conn, "s", snapshots.table_specs(conn, ["t"], []))
    assert conn.info.transaction_status == idle
    sql_exec("DELETE FROM t")
    restore(conn, snapshots.find(conn, "s"))
    assert conn.info.transaction_status == idle
    assert snap(conn, "t") == ORIG


def test_dry_run_changes_nothing(conn, sql_exec, t):
    _mixed_bad_change(sql_exec)
    state = snap(conn, "t")
    report = rollback(conn, BAD, dry_run=True)
    assert snap(conn, "t") == state
    assert report.op_id is None and report.status == "dry-run"
    # re-insert 3 and 4; restore 1 and 2; delete 6 and 40
    assert counts(report) == {"public.t": (2, 2, 2, 0, 0)}
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM _recovery.operations").fetchone() == (0,)
    assert conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = '_recovery' AND tablename LIKE 'undo%'"
    ).fetchone() == (0,)
    conn.rollback()
    real = rollback(conn, BAD)  # the plan was exact
    assert counts(real) == counts(report)
    assert snap(conn, "t") == ORIG


def test_cli_dry_run_json_sql_and_operations(conn, sql_exec, t, cli, tmp_path):
    _mixed_bad_change(sql_exec)
    state = snap(conn, "t")
    res = cli("rollback", "--tag", "bad", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["dry_run"] is True and doc["conflicts"] == 0
    (tab,) = doc["tables"]
    assert (tab["table"], tab["reinsert"], tab["restore"], tab["delete"]) == ("public.t", 2, 2, 2)
    assert snap(conn, "t") == state

    plan = tmp_path / "plan.sql"
    res = cli("rollback", "--tag", "bad", "--dry-run", "--sql", str(plan))
    assert res.exit_code == 0, res.output
    assert snap(conn, "t") == state
    text = plan.read_text()
    for stmt in ('INSERT INTO "public"."t"', 'UPDATE "public"."t"', 'DELETE FROM "public"."t"'):
        assert stmt in text

    done = tmp_path / "done.sql"
    res = cli("rollback", "--tag", "bad", "--yes", "--sql", str(done), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["status"] == "done"
    assert snap(conn, "t") == ORIG
    text = done.read_text()
    for stmt in ('INSERT INTO "public"."t"', 'UPDATE "public"."t"', 'DELETE FROM "public"."t"'):
        assert stmt in text

    res = cli("operations", "--json")
    ops = json.loads(res.stdout)
    (op,) = [o for o in ops if o["kind"] == "rollback"]
    assert op["op_id"] == doc["op_id"] and op["status"] == "done"
    assert op["tag"] == f"recovery-undo-{doc['op_id']}" and op["selector"] == {"tags": ["bad"]}
    res = cli("operations")
    assert f"recovery-undo-{doc['op_id']}" in res.output


def test_cli_conflict_exit_code(conn, same_column, cli):
    res = cli("rollback", "--tag", "bad", "--yes", "--json")
    assert res.exit_code == 2
    doc = json.loads(res.stdout)
    assert doc["conflicts"] == 1 and doc["tables"][0]["conflict_examples"][0]["key"] == {"id": 1}
    assert snap(conn, "t") == same_column


# -- 11. lock timeout --------------------------------------------------------------------------


def test_lock_timeout(conn, db_url, sql_exec, t):
    bad(sql_exec, "UPDATE t SET v = 'bad' WHERE id IN (1, 2)")
    state = snap(conn, "t")
    with psycopg.connect(db_url) as other:
        other.execute("SELECT * FROM t WHERE id = 2 FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(RecoveryError, match="lock_timeout") as exc:
            rollback(conn, BAD, lock_timeout="200ms")
        assert time.monotonic() - started < 5
        assert snap(conn, "t") == state
        other.rollback()
    assert not isinstance(exc.value, ConflictError)
    conn.rollback()
    assert conn.execute("SELECT status, error FROM _recovery.operations").fetchall() == [
        ("failed", "lock timeout")
    ]
    conn.rollback()
    rollback(conn, BAD, lock_timeout="200ms")
    assert snap(conn, "t") == ORIG
