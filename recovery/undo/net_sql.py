"""SQL of the undo's net tables, composed per table with psycopg.sql, and the helpers
the undo's SQL shares.

The engine works in three set-based steps, all run by the server:

1. `build_net`: the selected journal rows of one table become one row per key
   ("net" table): the state to restore (the before-image of the first selected
   change of that key), the state the selected changes left (the after-image of
   the last one), and, per column, whether a selected UPDATE modified it, with
   the first before and last after value of that column.  An UPDATE that
   changed the key counts as leaving the old key and entering the new one.

Values are compared through their text form so that every type works (json,
xml, point have no equality operator) and differences equality would hide
(-0 and 0, 1.0 and 1.00, json whitespace) still count.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from ..capture.tableinfo import Column, TableInfo


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def join_sql(parts: Sequence[sql.Composable], sep: str = ", ") -> sql.Composable:
    return sql.SQL(sep).join(parts)


def _kcols(t: TableInfo) -> list[sql.Identifier]:
    return [ident(f"k{n}") for n in range(len(t.key))]


def as_text(expr: sql.Composable) -> sql.Composable:
    return sql.SQL("({})::text").format(expr)


def distinct(a: sql.Composable, b: sql.Composable) -> sql.Composable:
    return sql.SQL("{} IS DISTINCT FROM {}").format(as_text(a), as_text(b))


def _same(a: sql.Composable, b: sql.Composable) -> sql.Composable:
    return sql.SQL("{} IS NOT DISTINCT FROM {}").format(as_text(a), as_text(b))


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
    s = ident(schema)
    cols = t.writable
    bvals = [c.value("b") for c in cols]
    avals = [c.value("a") for c in cols]
    bnames = [ident(f"b{n}") for n in range(len(cols))]
    anames = [ident(f"a{n}") for n in range(len(cols))]
    key_idx = [cols.index(k) for k in t.key]
    bk = [bnames[i] for i in key_idx]
    ak = [anames[i] for i in key_idx]
    same_key = sql.SQL("(ROW({}) = ROW({}))").format(join_sql(ak), join_sql(bk))
    kc = _kcols(t)
    win = sql.SQL("OVER (PARTITION BY {})").format(join_sql(kc))
    mods = [
        sql.SQL("(NOT simple OR {})").format(distinct(bnames[n], anames[n]))
        for n in range(len(cols))
    ]
    lasts: list[sql.Composable] = [
        sql.SQL("max(pos) FILTER (WHERE NOT chosen AND NOT simple) {} AS lnx").format(win)
    ]
    aggs: list[sql.Composable] = []
    for n, c in enumerate(cols):
        b, a, ln = bnames[n], anames[n], ident(f"ln{n}")
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
                m=ident(f"m{n}"),
                tc=ident(f"tc{n}"),
                ec=ident(f"ec{n}"),
                lost=ident(f"lost{n}"),
                base=ident(f"base{n}"),
                e=ident(f"e{n}"),
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
        bsel=join_sql([sql.SQL("{} AS {}").format(v, nm) for v, nm in zip(bvals, bnames)]),
        asel=join_sql([sql.SQL("{} AS {}").format(v, nm) for v, nm in zip(avals, anames)]),
        bkey_as=join_sql([sql.SQL("{} AS {}").format(b, k) for b, k in zip(bk, kc)]),
        akey_as=join_sql([sql.SQL("{} AS {}").format(a, k) for a, k in zip(ak, kc)]),
        same_key=same_key,
        bn=join_sql(bnames),
        a_if_same=join_sql(
            [
                sql.SQL("CASE WHEN has_a AND {} THEN {} END AS {}").format(same_key, a, a)
                for a in anames
            ]
        ),
        nulls=join_sql([sql.SQL("NULL") for _ in bnames]),
        an=join_sql(anames),
        kc=join_sql(kc),
        lasts=join_sql(lasts),
        aggs=join_sql(aggs),
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
        m = [distinct(b[n], a[n]) for n in range(len(cols))]
        tc, ec, base, e = b, a, nulls, a
        kchg = sql.SQL("ROW({}) IS DISTINCT FROM ROW({})").format(
            join_sql([b[i] for i in key_idx]), join_sql([a[i] for i in key_idx])
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
    per_col = join_sql(
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
                mn=ident(f"m{n}"),
                tcn=ident(f"tc{n}"),
                ecn=ident(f"ec{n}"),
                lostn=ident(f"lost{n}"),
                basen=ident(f"base{n}"),
                en=ident(f"e{n}"),
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
        kc=join_sql(kc),
        action=sql.Literal(action),
        keys=join_sql([sql.SQL("{} AS {}").format(k, n) for k, n in zip(keys, kc)]),
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
        join_sql(
            [
                sql.SQL("coalesce(bool_or({} OR {}), false)").format(
                    ident(f"m{n}"), ident(f"lost{n}")
                )
                for n in range(len(t.writable))
            ]
        ),
        sql.Identifier(schema, net),
    )
