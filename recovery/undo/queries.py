"""SQL of the undo engine, composed per table with psycopg.sql.

The engine works in three set-based steps, all run by the server:

1. `build_net`: the selected journal rows of one table become one row per key
   ("net" table): the state to restore (the before-image of the first selected
   change of that key), the state the selected changes left (the after-image of
   the last one), and, per column, whether a selected UPDATE modified it, with
   the first before and last after value of that column.  An UPDATE that
   changed the key counts as leaving the old key and entering the new one.
2. `build_status`: the net rows of a batch, compared cell by cell with the
   table's current rows, get an action (insert, update, delete), a status (ok,
   done, conflict), the conflicting columns, and per column a flag saying
   whether it is written.
3. `apply_*`: INSERT ... SELECT, UPDATE ... FROM and DELETE ... USING from
   those two tables.

Values are compared through their text form so that every type works (json,
xml, point have no equality operator) and differences equality would hide
(-0 and 0, 1.0 and 1.00, json whitespace) still count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from ..capture.tableinfo import Column, TableInfo


def _i(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _join(parts: Sequence[sql.Composable], sep: str = ", ") -> sql.Composable:
    return sql.SQL(sep).join(parts)


def _kcols(t: TableInfo) -> list[sql.Identifier]:
    return [_i(f"k{n}") for n in range(len(t.key))]


def _txt(expr: sql.Composable) -> sql.Composable:
    return sql.SQL("({})::text").format(expr)


def _distinct(a: sql.Composable, b: sql.Composable) -> sql.Composable:
    return sql.SQL("{} IS DISTINCT FROM {}").format(_txt(a), _txt(b))


def _same(a: sql.Composable, b: sql.Composable) -> sql.Composable:
    return sql.SQL("{} IS NOT DISTINCT FROM {}").format(_txt(a), _txt(b))


def _first(c: Column, value: sql.Composable, order: str, cond: sql.Composable) -> sql.Composable:
    """The first value in `order` among the rows where cond holds (aggregate)."""
    if not c.array:
        return sql.SQL("(array_agg({} ORDER BY {}) FILTER (WHERE {}))[1]").format(
            value, sql.SQL(order), cond
        )
    # array_agg() of arrays builds a multi-dimensional array (whose [1] is NULL, and
    # arrays of different lengths fail): carry array values as text.
    return sql.SQL("((array_agg(({})::text ORDER BY {}) FILTER (WHERE {}))[1])::{}").format(
        value, sql.SQL(order), cond, sql.SQL(c.type_name)
    )


def build_net(
    t: TableInfo, schema: str, net: str, where: sql.Composable, lo: int, hi: int
) -> sql.Composed:
    """CREATE TABLE net AS: one row per key touched by the selected changes.

    Changes of the same keys that the selector does not cover, made between the
    first and the last selected change (lo..hi), are read too: a legitimate write
    in the middle of a bad deploy decides what can still be undone.  Per key and
    column, only the trailing run of selected changes (those after the last
    non-selected change of that column) is undone; selected changes before a
    non-selected one are "lost" cells, reported as conflicts.  Row existence
    (insert, delete, key change) follows the same rule.
    """
    s = _i(schema)
    cols = t.writable
    bvals = [c.value("b") for c in cols]
    avals = [c.value("a") for c in cols]
    bnames = [_i(f"b{n}") for n in range(len(cols))]
    anames = [_i(f"a{n}") for n in range(len(cols))]
    key_idx = [cols.index(k) for k in t.key]
    bk = [bnames[i] for i in key_idx]
    ak = [anames[i] for i in key_idx]
    same_key = sql.SQL("(ROW({}) = ROW({}))").format(_join(ak), _join(bk))
    kc = _kcols(t)
    win = sql.SQL("OVER (PARTITION BY {})").format(_join(kc))
    mods = [
        sql.SQL("(NOT simple OR {})").format(_distinct(bnames[n], anames[n]))
        for n in range(len(cols))
    ]
    lasts: list[sql.Composable] = [
        sql.SQL("max(pos) FILTER (WHERE NOT chosen AND NOT simple) {} AS lnx").format(win)
    ]
    aggs: list[sql.Composable] = []
    for n, c in enumerate(cols):
        b, a, ln = bnames[n], anames[n], _i(f"ln{n}")
        lasts.append(
            sql.SQL("max(pos) FILTER (WHERE NOT chosen AND {}) {} AS {}").format(mods[n], win, ln)
        )
        trailing = sql.SQL("chosen AND {} AND pos > coalesce({}, -1)").format(mods[n], ln)
        aggs.append(
            sql.SQL(
                "coalesce(bool_or({tr}), false) AS {m}, {tcv} AS {tc}, {ecv} AS {ec},"
                " coalesce(bool_or(chosen AND {mod} AND pos < {ln}), false) AS {lost},"
                " {basev} AS {base}, {ev} AS {e}"
            ).format(
                tr=trailing,
                mod=mods[n],
                ln=ln,
                m=_i(f"m{n}"),
                tc=_i(f"tc{n}"),
                ec=_i(f"ec{n}"),
                lost=_i(f"lost{n}"),
                base=_i(f"base{n}"),
                e=_i(f"e{n}"),
                tcv=_first(c, b, "pos", trailing),
                ecv=_first(c, a, "pos DESC", trailing),
                basev=_first(
                    c, b, "pos", sql.SQL("chosen AND NOT simple AND pos > coalesce(lnx, -1)")
                ),
                ev=_first(c, a, "pos DESC", sql.SQL("chosen")),
            )
        )
    j = sql.Identifier(schema, t.journal)
    return sql.SQL(
        "CREATE TABLE {net} AS "
        "WITH st AS (SELECT st.stmt_id, st.op, coalesce(({where}), false) AS chosen"
        "  FROM {s}.stmt st WHERE st.table_id = {tid} AND st.stmt_id BETWEEN {lo} AND {hi}),"
        " b AS (SELECT x.* FROM {j} x WHERE x.rec_img = 'B' AND x.rec_stmt BETWEEN {lo} AND {hi}),"
        " a AS (SELECT x.* FROM {j} x WHERE x.rec_img = 'A' AND x.rec_stmt BETWEEN {lo} AND {hi}),"
        " ev AS (SELECT coalesce(b.rec_stmt, a.rec_stmt) AS st, coalesce(b.rec_ord, a.rec_ord)"
        "  AS ord, st.op, st.chosen, b.rec_stmt IS NOT NULL AS has_b,"
        "  a.rec_stmt IS NOT NULL AS has_a, {bsel}, {asel}"
        "  FROM b FULL JOIN a ON a.rec_stmt = b.rec_stmt AND a.rec_ord = b.rec_ord"
        "  JOIN st ON st.stmt_id = coalesce(b.rec_stmt, a.rec_stmt)),"
        " kev0 AS ("
        "  SELECT {bkey_as}, (st * 2)::numeric * 2147483648 + ord AS pos, chosen,"
        "   true AS has_before, (has_a AND {same_key}) AS has_after,"
        "   (op = 'U' AND has_a AND {same_key}) AS simple, {bn}, {a_if_same}"
        "  FROM ev WHERE has_b"
        "  UNION ALL"
        "  SELECT {akey_as}, (st * 2 + 1)::numeric * 2147483648 + ord, chosen, false, true,"
        "   false, {nulls}, {an}"
        "  FROM ev WHERE has_a AND (NOT has_b OR NOT {same_key})),"
        " kev AS (SELECT kev0.*, {lasts} FROM kev0),"
        " g AS (SELECT {kc}, count(*) FILTER (WHERE chosen) AS n_changes,"
        "  coalesce((array_agg(has_before ORDER BY pos) FILTER (WHERE chosen AND NOT simple"
        "   AND pos > coalesce(lnx, -1)))[1], true) AS t_present,"
        "  (array_agg(has_after ORDER BY pos DESC) FILTER (WHERE chosen))[1] AS e_present,"
        "  coalesce(bool_or(chosen AND NOT simple AND pos < lnx), false) AS lost_row,"
        "  {aggs}"
        "  FROM kev GROUP BY {kc} HAVING bool_or(chosen))"
        " SELECT row_number() OVER (ORDER BY {kc}) AS bn,"
        "  CASE WHEN t_present AND e_present THEN 'update' WHEN t_present THEN 'insert'"
        "   WHEN e_present THEN 'delete' ELSE 'none' END AS action,"
        "  false AS done, g.* FROM g"
    ).format(
        net=sql.Identifier(schema, net),
        s=s,
        tid=sql.Literal(t.table_id),
        lo=sql.Literal(lo),
        hi=sql.Literal(hi),
        where=where,
        j=j,
        bsel=_join([sql.SQL("{} AS {}").format(v, nm) for v, nm in zip(bvals, bnames)]),
        asel=_join([sql.SQL("{} AS {}").format(v, nm) for v, nm in zip(avals, anames)]),
        bkey_as=_join([sql.SQL("{} AS {}").format(b, k) for b, k in zip(bk, kc)]),
        akey_as=_join([sql.SQL("{} AS {}").format(a, k) for a, k in zip(ak, kc)]),
        same_key=same_key,
        bn=_join(bnames),
        a_if_same=_join(
            [
                sql.SQL("CASE WHEN has_a AND {} THEN {} END AS {}").format(same_key, a, a)
                for a in anames
            ]
        ),
        nulls=_join([sql.SQL("NULL") for _ in bnames]),
        an=_join(anames),
        kc=_join(kc),
        lasts=_join(lasts),
        aggs=_join(aggs),
    )


def build_net_single(t: TableInfo, schema: str, net: str, stmt_id: int, op: str) -> sql.Composed:
    """The net table when the range holds one statement of the table, and it is selected.

    A statement touches a row once, so each key has one change and no other change
    interleaves: the net row is a projection of that change's journal rows, with no
    window or aggregate (the common case of a bulk backfill, and the cheap one).
    Same columns as build_net, plus `kchg`: an UPDATE that changed a key needs the
    general build (a key may then be left and entered by two rows).
    """
    cols = t.writable
    j = sql.Identifier(schema, t.journal)
    kc = _kcols(t)

    def img(alias: str) -> list[sql.Composable]:
        return [c.value(alias) for c in cols]

    b, a = img("b"), img("a")
    nulls: list[sql.Composable] = [sql.SQL("NULL::{}").format(sql.SQL(c.type_name)) for c in cols]
    key_idx = [cols.index(k) for k in t.key]
    kchg: sql.Composable
    if op == "U":
        src = sql.SQL(
            "{j} b JOIN {j} a ON a.rec_stmt = b.rec_stmt AND a.rec_ord = b.rec_ord"
            " AND a.rec_img = 'A' WHERE b.rec_stmt = {st} AND b.rec_img = 'B'"
        ).format(j=j, st=sql.Literal(stmt_id))
        keys, action, tp, ep = [b[i] for i in key_idx], "update", True, True
        m = [_distinct(b[n], a[n]) for n in range(len(cols))]
        tc, ec, base, e = b, a, nulls, a
        kchg = sql.SQL("ROW({}) IS DISTINCT FROM ROW({})").format(
            _join([b[i] for i in key_idx]), _join([a[i] for i in key_idx])
        )
    elif op in ("D", "T"):
        src = sql.SQL("{j} b WHERE b.rec_stmt = {st} AND b.rec_img = 'B'").format(
            j=j, st=sql.Literal(stmt_id)
        )
        keys, action, tp, ep = [b[i] for i in key_idx], "insert", True, False
        m = [sql.SQL("true")] * len(cols)
        tc, ec, base, e = b, nulls, nulls, nulls
        kchg = sql.SQL("false")
    else:
        src = sql.SQL("{j} a WHERE a.rec_stmt = {st} AND a.rec_img = 'A'").format(
            j=j, st=sql.Literal(stmt_id)
        )
        keys, action, tp, ep = [a[i] for i in key_idx], "delete", False, True
        m = [sql.SQL("true")] * len(cols)
        tc, ec, base, e = nulls, a, nulls, a
        kchg = sql.SQL("false")
    per_col = _join(
        [
            sql.SQL(
                "{m} AS {mn}, {tc} AS {tcn}, {ec} AS {ecn}, false AS {lostn}, {base} AS {basen},"
                " {e} AS {en}"
            ).format(
                m=m[n],
                tc=tc[n],
                ec=ec[n],
                base=base[n],
                e=e[n],
                mn=_i(f"m{n}"),
                tcn=_i(f"tc{n}"),
                ecn=_i(f"ec{n}"),
                lostn=_i(f"lost{n}"),
                basen=_i(f"base{n}"),
                en=_i(f"e{n}"),
            )
            for n in range(len(cols))
        ]
    )
    return sql.SQL(
        "CREATE TABLE {net} AS SELECT row_number() OVER (ORDER BY {kc}) AS bn, {action} AS action,"
        " false AS done, g.* FROM (SELECT {keys}, 1::bigint AS n_changes, {tp} AS t_present,"
        " {ep} AS e_present, false AS lost_row, {per_col}, {kchg} AS kchg FROM {src}) g"
    ).format(
        net=sql.Identifier(schema, net),
        kc=_join(kc),
        action=sql.Literal(action),
        keys=_join([sql.SQL("{} AS {}").format(k, n) for k, n in zip(keys, kc)]),
        tp=sql.Literal(tp),
        ep=sql.Literal(ep),
        per_col=per_col,
        kchg=kchg,
        src=src,
    )


def net_activity(t: TableInfo, schema: str, net: str) -> sql.Composed:
    """One row: per column, whether any net row may write it or lost it; and whether
    any row is not a plain UPDATE.  Columns no row touches need no comparison."""
    return sql.SQL("SELECT {}, coalesce(bool_or(action <> 'update'), false) FROM {}").format(
        _join(
            [
                sql.SQL("coalesce(bool_or({} OR {}), false)").format(_i(f"m{n}"), _i(f"lost{n}"))
                for n in range(len(t.writable))
            ]
        ),
        sql.Identifier(schema, net),
    )


def _target(n: int) -> sql.Composable:
    """Value a column is restored to: the trailing selected run's first before-value,
    else (for a re-inserted row) the before-image of the change that removed it,
    else (overwrite of a row deleted since) the last selected after-image."""
    return sql.SQL(
        "CASE WHEN p.{m} THEN p.{tc} WHEN p.action = 'insert' THEN p.{base} ELSE p.{e} END"
    ).format(m=_i(f"m{n}"), tc=_i(f"tc{n}"), base=_i(f"base{n}"), e=_i(f"e{n}"))


def _expected(n: int) -> sql.Composable:
    return sql.SQL("p.{}").format(_i(f"ec{n}"))


def key_match(t: TableInfo, left: str, right: str = "p") -> sql.Composable:
    """Join condition between the table (alias left) and a net table (alias right)."""
    return _join(
        [
            sql.SQL("{}.{} = {}.{}").format(_i(left), _i(c.name), _i(right), _i(f"k{n}"))
            for n, c in enumerate(t.key)
        ],
        " AND ",
    )


@dataclass(frozen=True)
class Reference:
    """A foreign key into the table: referencing table, its columns, the referenced
    columns, and (when that table is part of the undo) its net table and key."""

    table: str
    columns: tuple[str, ...]
    referenced: tuple[str, ...]
    net: str | None = None
    key: tuple[str, ...] = ()


def _referenced(schema: str, ref: Reference) -> sql.Composable:
    """Whether the current row is referenced by a row the selected changes never touched
    (a later write made it): deleting the row would break it, or cascade to it."""
    match = _join(
        [
            sql.SQL("x.{} = cur.{}").format(_i(c), _i(r))
            for c, r in zip(ref.columns, ref.referenced)
        ],
        " AND ",
    )
    if ref.net is not None:
        match = sql.SQL("{} AND NOT EXISTS (SELECT 1 FROM {} n WHERE {})").format(
            match,
            sql.Identifier(schema, ref.net),
            _join(
                [sql.SQL("n.{} = x.{}").format(_i(f"k{i}"), _i(k)) for i, k in enumerate(ref.key)],
                " AND ",
            ),
        )
    return sql.SQL("EXISTS (SELECT 1 FROM {} x WHERE {})").format(sql.SQL(ref.table), match)


def build_status(
    t: TableInfo,
    schema: str,
    net: str,
    status: str,
    batch: str,
    refs: Sequence[Reference] = (),
    active: Sequence[bool] | None = None,
    only_updates: bool = False,
) -> sql.Composed:
    """CREATE TEMP TABLE status: action, status, conflicting columns and write flags per key.

    Each comparison of a current cell with a target or expected value is computed
    once per row (inner query, fenced with OFFSET 0 so the planner does not copy
    the expressions into every use).  With `active` (from net_activity), columns
    that no row writes or lost are skipped, and with `only_updates` the
    comparisons only an INSERT or DELETE needs are too.
    """
    cols = t.writable
    act = list(active) if active is not None else [True] * len(cols)
    present = sql.SQL("(cur.{} IS NOT NULL)").format(_i(t.key[0].name))
    inner: list[sql.Composable] = []
    now_items: list[sql.Composable] = [
        sql.SQL("CASE WHEN c.cur_present AND c.action = 'delete' AND c.{} THEN {} END").format(
            _i(f"ref{i}"), sql.Literal(f"(referenced by {ref.table})")
        )
        for i, ref in enumerate(refs)
    ]
    inner += [
        sql.SQL("{} AND p.action = 'delete' AND {} AS {}").format(
            present, _referenced(schema, ref), _i(f"ref{i}")
        )
        for i, ref in enumerate(refs)
    ]
    lost_items: list[sql.Composable] = [
        sql.SQL("CASE WHEN c.lost_row THEN '(row removed or re-created by a later change)' END")
    ]
    flags: list[sql.Composable] = []
    false = sql.SQL("false")
    for n, col in enumerate(cols):
        if not act[n]:
            flags.append(sql.SQL("false AS {}, false AS {}").format(_i(f"r{n}"), _i(f"o{n}")))
            continue
        cur = sql.SQL("cur.{}").format(_i(col.name))
        mn, tn, en, fe = (_i(f"m_{n}"), _i(f"eqt_{n}"), _i(f"eqe_{n}"), _i(f"eqf_{n}"))
        # An UPDATE restores a column only if the selected changes left it different
        # from what they found (net effect): deleting and re-inserting a row, or
        # a -> b -> a, leaves the column to later writes, with no conflict.
        inner.append(
            sql.SQL("(p.{} AND {}) AS {}").format(
                _i(f"m{n}"),
                _distinct(
                    sql.SQL("p.{}").format(_i(f"tc{n}")), sql.SQL("p.{}").format(_i(f"ec{n}"))
                ),
                mn,
            )
        )
        inner.append(sql.SQL("{} AS {}").format(_same(cur, _target(n)), tn))
        inner.append(sql.SQL("{} AS {}").format(_same(cur, _expected(n)), en))
        inner.append(
            sql.SQL("{} AS {}").format(
                false if only_updates else _same(cur, sql.SQL("p.{}").format(_i(f"e{n}"))), fe
            )
        )
        inner.append(sql.SQL("p.{} AS {}").format(_i(f"lost{n}"), _i(f"lost_{n}")))
        cond = sql.SQL(
            "CASE c.action"
            " WHEN 'update' THEN c.{m} AND NOT c.{t} AND NOT c.{e}"
            " WHEN 'delete' THEN NOT c.{f}"
            " WHEN 'insert' THEN NOT c.{t} ELSE false END"
        ).format(m=mn, t=tn, e=en, f=fe)
        now_items.append(
            sql.SQL("CASE WHEN c.cur_present AND {} THEN {} END").format(
                cond, sql.Literal(col.name)
            )
        )
        lost_items.append(
            sql.SQL("CASE WHEN c.{} AND c.action <> 'none' THEN {} END").format(
                _i(f"lost_{n}"), sql.Literal(col.name)
            )
        )
        # r: restore (target differs from now, and now is what the bad change left);
        # o: overwrite (target differs from now, whatever now is).
        flags.append(
            sql.SQL(
                "(c.action = 'update' AND c.cur_present AND c.{m} AND NOT c.{t} AND c.{e}) AS {rf},"
                " (c.cur_present AND CASE c.action WHEN 'update' THEN c.{m} AND NOT c.{t}"
                "  WHEN 'insert' THEN NOT c.{t} ELSE false END) AS {of}"
            ).format(m=mn, t=tn, e=en, rf=_i(f"r{n}"), of=_i(f"o{n}"))
        )
    inner_sql = _join(inner) if inner else sql.SQL("true AS _none")
    return sql.SQL(
        "CREATE TEMP TABLE {st} ON COMMIT DROP AS"
        " SELECT q.bn, q.action, q.cur_present, q.now_cols || q.lost_cols AS conflict_cols,"
        "  {flag_names}, CASE"
        "  WHEN q.action = 'none' THEN 'done'"
        "  WHEN q.action = 'delete' THEN CASE WHEN NOT q.cur_present THEN 'done'"
        "   WHEN cardinality(q.now_cols) + cardinality(q.lost_cols) > 0 THEN 'conflict'"
        "   ELSE 'ok' END"
        "  WHEN q.action = 'insert' THEN CASE WHEN q.cur_present AND cardinality(q.now_cols) = 0"
        "   THEN 'done' WHEN cardinality(q.now_cols) + cardinality(q.lost_cols) > 0"
        "   THEN 'conflict' ELSE 'ok' END"
        "  ELSE CASE WHEN NOT q.cur_present"
        "   OR cardinality(q.now_cols) + cardinality(q.lost_cols) > 0 THEN 'conflict'"
        "   WHEN {any_r} THEN 'ok' ELSE 'done' END END AS status"
        " FROM (SELECT c.bn, c.action, c.cur_present,"
        "  CASE WHEN c.action = 'update' AND NOT c.cur_present THEN ARRAY['(row deleted since)']"
        "   ELSE array_remove(ARRAY[{now}]::text[], NULL) END AS now_cols,"
        "  array_remove(ARRAY[{lost}]::text[], NULL) AS lost_cols, {flags}"
        "  FROM (SELECT p.bn, p.action, p.lost_row, {present} AS cur_present, {inner}"
        "   FROM {net} p JOIN {batch} bt ON bt.bn = p.bn"
        "   LEFT JOIN {tbl} cur ON {match} OFFSET 0) c) q"
    ).format(
        st=_i(status),
        net=sql.Identifier(schema, net),
        batch=_i(batch),
        tbl=t.ident,
        present=present,
        inner=inner_sql,
        now=_join(now_items),
        lost=_join(lost_items),
        flags=_join(flags),
        match=key_match(t, "cur"),
        flag_names=_join(
            [sql.SQL("q.{}, q.{}").format(_i(f"r{n}"), _i(f"o{n}")) for n in range(len(cols))]
        ),
        any_r=_join([sql.SQL("q.{}").format(_i(f"r{n}")) for n in range(len(cols))], " OR "),
    )


def lock_rows(t: TableInfo, schema: str, net: str, batch: str) -> sql.Composed:
    """Lock the current rows of a batch so that nothing changes them under the undo."""
    return sql.SQL(
        "SELECT count(*) FROM (SELECT 1 FROM {tbl} cur JOIN {net} p ON {match}"
        " JOIN {batch} bt ON bt.bn = p.bn FOR UPDATE OF cur) x"
    ).format(
        tbl=t.ident, net=sql.Identifier(schema, net), match=key_match(t, "cur"), batch=_i(batch)
    )


def _acting(overwrite: bool, cells: bool = False) -> sql.Composable:
    """Rows an apply statement acts on.  Without overwrite, a conflicting UPDATE row
    still gets its non-conflicting cells restored (`cells`: the restore flags r<n>
    never include a conflicting cell), and a row to re-insert that is still absent
    is re-inserted even when some of its cells were overwritten by later changes
    (those cells take the later values)."""
    if overwrite:
        return sql.SQL("(s.status = 'ok' OR s.status = 'conflict')")
    if cells:
        return sql.SQL("(s.status = 'ok' OR (s.status = 'conflict' AND s.action = 'update'))")
    return sql.SQL(
        "(s.status = 'ok' OR (s.status = 'conflict' AND s.action = 'insert' AND NOT s.cur_present))"
    )


def apply_insert(t: TableInfo, schema: str, net: str, status: str, overwrite: bool) -> sql.Composed:
    """Re-insert rows whose restore target is present and that are absent now."""
    cols = t.writable
    overriding = (
        sql.SQL(" OVERRIDING SYSTEM VALUE") if any(c.identity_always for c in cols) else sql.SQL("")
    )
    cond = sql.SQL("s.action = 'insert' AND NOT s.cur_present AND {}").format(_acting(overwrite))
    if overwrite:
        cond = sql.SQL("(({}) OR (s.action = 'update' AND NOT s.cur_present))").format(cond)
    return sql.SQL(
        "INSERT INTO {tbl} ({names}){ov} SELECT {vals} FROM {net} p JOIN {st} s ON s.bn = p.bn"
        " WHERE {cond} ORDER BY p.bn"
    ).format(
        tbl=t.ident,
        names=_join([_i(c.name) for c in cols]),
        ov=overriding,
        vals=_join([_target(n) for n in range(len(cols))]),
        net=sql.Identifier(schema, net),
        st=_i(status),
        cond=cond,
    )


def update_masks(t: TableInfo, status: str, overwrite: bool) -> sql.Composed:
    """SELECT the distinct sets of columns to write, one UPDATE statement per set."""
    flag = "o" if overwrite else "r"
    return sql.SQL(
        "SELECT DISTINCT {flags} FROM {st} s WHERE s.cur_present AND {acting}"
        " AND s.action IN ('update', 'insert')"
    ).format(
        flags=_join([_i(f"{flag}{n}") for n in range(len(t.writable))]),
        st=_i(status),
        acting=_acting(overwrite, cells=True),
    )


def apply_update(
    t: TableInfo, schema: str, net: str, status: str, overwrite: bool, mask: Sequence[bool]
) -> sql.Composed:
    """Write back exactly the columns of one mask, for the rows that have that mask."""
    cols = t.writable
    flag = "o" if overwrite else "r"
    sets = [
        sql.SQL("{} = {}").format(_i(c.name), _target(n))
        for n, c in enumerate(cols)
        if mask[n] and not c.identity_always
    ]
    match = _join(
        [
            sql.SQL("s.{} = {}").format(_i(f"{flag}{n}"), sql.Literal(bool(m)))
            for n, m in enumerate(mask)
        ],
        " AND ",
    )
    return sql.SQL(
        "UPDATE {tbl} cur SET {sets} FROM {net} p JOIN {st} s ON s.bn = p.bn"
        " WHERE {key} AND s.cur_present AND {acting} AND s.action IN ('update', 'insert')"
        " AND {match}"
    ).format(
        tbl=t.ident,
        sets=_join(sets),
        net=sql.Identifier(schema, net),
        st=_i(status),
        key=key_match(t, "cur"),
        acting=_acting(overwrite, cells=True),
        match=match,
    )


def apply_delete(t: TableInfo, schema: str, net: str, status: str, overwrite: bool) -> sql.Composed:
    """Delete rows that the selected changes created and that are still as they left them."""
    return sql.SQL(
        "DELETE FROM {tbl} cur USING {net} p JOIN {st} s ON s.bn = p.bn"
        " WHERE {key} AND s.action = 'delete' AND s.cur_present AND {acting}"
    ).format(
        tbl=t.ident,
        net=sql.Identifier(schema, net),
        st=_i(status),
        key=key_match(t, "cur"),
        acting=_acting(overwrite),
    )


def conflict_examples(t: TableInfo, schema: str, net: str, status: str, limit: int) -> sql.Composed:
    """A few conflicting rows with key, columns, restore target, left value and current value."""
    cols = t.writable
    names = [c.name for c in cols]
    pairs = _join(
        [
            sql.SQL("{}, jsonb_build_array({}, {}, {})").format(
                sql.Literal(nm),
                _txt(_target(n)),
                _txt(_expected(n)),
                _txt(sql.SQL("cur.{}").format(_i(nm))),
            )
            for n, nm in enumerate(names)
        ]
    )
    return sql.SQL(
        "SELECT s.action, s.conflict_cols, jsonb_build_object({keys}), jsonb_build_object({pairs})"
        " FROM {st} s JOIN {net} p ON p.bn = s.bn LEFT JOIN {tbl} cur ON {match}"
        " WHERE s.status = 'conflict' ORDER BY p.bn LIMIT {lim}"
    ).format(
        keys=_join(
            [
                sql.SQL("{}, p.{}").format(sql.Literal(c.name), _i(f"k{n}"))
                for n, c in enumerate(t.key)
            ]
        ),
        pairs=pairs,
        st=_i(status),
        net=sql.Identifier(schema, net),
        tbl=t.ident,
        match=key_match(t, "cur"),
        lim=sql.Literal(limit),
    )
