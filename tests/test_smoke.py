from recovery import Selector, enable_capture, rollback
from tests.conftest import rows


def test_update_undone_exactly(conn, sql_exec):
    sql_exec("CREATE TABLE t (id int PRIMARY KEY, v text, n int)")
    sql_exec("INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 5) g")
    enable_capture(conn, ["t"])
    before = rows(conn, "t")
    sql_exec("SET recovery.tag = 'bad'; UPDATE t SET v = 'broken' WHERE id <= 3")
    sql_exec("UPDATE t SET n = 100 WHERE id = 1")
    report = rollback(conn, Selector(tags=("bad",)))
    assert report.status == "done"
    after = rows(conn, "t")
    assert after[0] == (1, "v1", 100)
    assert after[1:] == before[1:]
