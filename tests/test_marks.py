"""Marks: named points in time, accepted wherever a time is."""

import json

from tests.conftest import rows


def _setup(sql_exec, cli):  # type: ignore[no-untyped-def]
    sql_exec("CREATE TABLE m (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO m SELECT g, 'v' || g FROM generate_series(1, 4) g")
    assert cli("capture", "enable", "m").exit_code == 0


def test_mark_bounds_the_undo(cli, conn, sql_exec):
    _setup(sql_exec, cli)
    sql_exec("UPDATE m SET v = 'early' WHERE id = 1")  # before the mark: kept
    res = cli("mark", "before-deploy-42", "--note", "deploy 42")
    assert res.exit_code == 0, res.output
    assert "before-deploy-42" in res.output
    sql_exec("UPDATE m SET v = 'bad' WHERE id IN (2, 3); DELETE FROM m WHERE id = 4")
    assert cli("mark", "after-deploy-42").exit_code == 0
    sql_exec("INSERT INTO m VALUES (5, 'later')")  # after the second mark: kept

    res = cli("changes", "--since", "before-deploy-42", "--until", "after-deploy-42", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["statements"], doc["rows"]) == (2, 3)
    res = cli("diff", "--since", "before-deploy-42", "--until", "after-deploy-42", "--json")
    assert {r["key"]["id"] for r in json.loads(res.stdout)} == {"2", "3", "4"}

    res = cli("rollback", "--since", "before-deploy-42", "--until", "after-deploy-42", "--yes")
    assert res.exit_code == 0, res.output
    assert rows(conn, "m") == [(1, "early"), (2, "v2"), (3, "v3"), (4, "v4"), (5, "later")]


def test_mark_list_and_errors(cli, conn, sql_exec):
    _setup(sql_exec, cli)
    assert cli("mark", "m1", "--note", "first").exit_code == 0
    doc = json.loads(cli("mark", "--list", "--json").stdout)
    assert [(m["name"], m["note"]) for m in doc] == [("m1", "first")]

    res = cli("mark", "m1")  # a name is used once
    assert res.exit_code == 1 and "exists already" in res.stderr
    res = cli("mark", "bad name!")
    assert res.exit_code == 1 and "not valid" in res.stderr
    res = cli("mark")
    assert res.exit_code == 1 and "--list" in res.stderr

    sql_exec("UPDATE m SET v = 'x' WHERE id = 1")
    before = rows(conn, "m")
    res = cli("rollback", "--since", "no-such-mark", "--yes")  # unknown mark: nothing runs
    assert res.exit_code == 1
    assert "neither a mark nor a time" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert rows(conn, "m") == before
    assert [m["name"] for m in json.loads(cli("mark", "--list", "--json").stdout)] == ["m1"]
