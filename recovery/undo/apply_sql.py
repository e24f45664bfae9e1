"""SQL that compares a batch of net rows with the table now and applies it, composed per
table with psycopg.sql (the second and third steps of the undo; net_sql.py has the first).

- `build_status`: the net rows of a batch, compared cell by cell with the
  table's current rows, get an action (insert, update, delete), a status (ok,
  done, conflict), the conflicting columns, and per column a flag saying
  whether it is written.
- `apply_*`: INSERT ... SELECT, UPDATE ... FROM and DELETE ... USING from
  those two tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from ..capture.tableinfo import TableInfo
from .net_sql import as_text, distinct, ident, join_sql


def _same(a: sql.Composable, b: sql.Composable) -> sql.Composable:
    return sql.SQL("{} IS NOT DISTINCT FROM {}").format(as_text(a), as_text(b))


def _target(n: int) -> sql.Composable:
    """Value a column is restored to: the trailing selected run's first before-value,
    else (for a re-inserted row) the before-image of the change that removed it,
    else (overwrite of a row deleted since) the last selected after-image."""
    return sql.SQL(
        "CASE WHEN p.{m} THEN p.{tc} WHEN p.action = 'insert' THEN p.{base} ELSE p.{e} END"
    ).format(m=ident(f"m{n}"), tc=ident(f"tc{n}"), base=ident(f"base{n}"), e=ident(f"e{n}"))


def _expected(n: int) -> sql.Composable:
    return sql.SQL("p.{}").format(ident(f"ec{n}"))


def key_match(t: TableInfo, left: str, right: str = "p") -> sql.Composable:
    """Join condition between the table (alias left) and a net table (alias right)."""
    return join_sql(
        [
            sql.SQL("{}.{} = {}.{}").format(
                ident(left), ident(c.name), ident(right), ident(f"k{n}")
            )
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
    match = join_sql(
        [
            sql.SQL("x.{} = cur.{}").format(ident(c), ident(r))
            for c, r in zip(ref.columns, ref.referenced)
        ],
        " AND ",
    )
    if ref.net is not None:
        match = sql.SQL("{} AND NOT EXISTS (SELECT 1 FROM {} n WHERE {})").format(
            match,
            sql.Identifier(schema, ref.net),
            join_sql(
                [
                    sql.SQL("n.{} = x.{}").format(ident(f"k{i}"), ident(k))
                    for i, k in enumerate(ref.key)
                ],
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
    present = sql.SQL("(cur.{} IS NOT NULL)").format(ident(t.key[0].name))
    inner: list[sql.Composable] = []
    now_items: list[sql.Composable] = [
        sql.SQL("CASE WHEN c.cur_present AND c.action = 'delete' AND c.{} THEN {} END").format(
            ident(f"ref{i}"), sql.Literal(f"(referenced by {ref.table})")
        )
        for i, ref in enumerate(refs)
    ]
    inner += [
        sql.SQL("{} AND p.action = 'delete' AND {} AS {}").format(
            present, _referenced(schema, ref), ident(f"ref{i}")
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
            flags.append(sql.SQL("false AS {}, false AS {}").format(ident(f"r{n}"), ident(f"o{n}")))
            continue
        cur = sql.SQL("cur.{}").format(ident(col.name))
        mn, tn, en, fe = (ident(f"m_{n}"), ident(f"eqt_{n}"), ident(f"eqe_{n}"), ident(f"eqf_{n}"))
        # An UPDATE restores a column only if the selected changes left it different
        # from what they found (net effect): deleting and re-inserting a row, or
        # a -> b -> a, leaves the column to later writes, with no conflict.
        inner.append(
            sql.SQL("(p.{} AND {}) AS {}").format(
                ident(f"m{n}"),
                distinct(
                    sql.SQL("p.{}").format(ident(f"tc{n}")), sql.SQL("p.{}").format(ident(f"ec{n}"))
                ),
                mn,
            )
        )
        inner.append(sql.SQL("{} AS {}").format(_same(cur, _target(n)), tn))
        inner.append(sql.SQL("{} AS {}").format(_same(cur, _expected(n)), en))
        inner.append(
            sql.SQL("{} AS {}").format(
                false if only_updates else _same(cur, sql.SQL("p.{}").format(ident(f"e{n}"))), fe
            )
        )
        inner.append(sql.SQL("p.{} AS {}").format(ident(f"lost{n}"), ident(f"lost_{n}")))
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
                ident(f"lost_{n}"), sql.Literal(col.name)
            )
        )
        # r: restore (target differs from now, and now is what the bad change left);
        # o: overwrite (target differs from now, whatever now is).
        flags.append(
            sql.SQL(
                "(c.action = 'update' AND c.cur_present AND c.{m} AND NOT c.{t} AND c.{e}) AS {rf},"
                " (c.cur_present AND CASE c.action WHEN 'update' THEN c.{m} AND NOT c.{t}"
                "  WHEN 'insert' THEN NOT c.{t} ELSE false END) AS {of}"
            ).format(m=mn, t=tn, e=en, rf=ident(f"r{n}"), of=ident(f"o{n}"))
        )
    inner_sql = join_sql(inner) if inner else sql.SQL("true AS _none")
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
        st=ident(status),
        net=sql.Identifier(schema, net),
        batch=ident(batch),
        tbl=t.ident,
        present=present,
        inner=inner_sql,
        now=join_sql(now_items),
        lost=join_sql(lost_items),
        flags=join_sql(flags),
        match=key_match(t, "cur"),
        flag_names=join_sql(
            [sql.SQL("q.{}, q.{}").format(ident(f"r{n}"), ident(f"o{n}")) for n in range(len(cols))]
        ),
        any_r=join_sql([sql.SQL("q.{}").format(ident(f"r{n}")) for n in range(len(cols))], " OR "),
    )


def lock_rows(t: TableInfo, schema: str, net: str, batch: str) -> sql.Composed:
    """Lock the current rows of a batch so that nothing changes them under the undo."""
    return sql.SQL(
        "SELECT count(*) FROM (SELECT 1 FROM {tbl} cur JOIN {net} p ON {match}"
        " JOIN {batch} bt ON bt.bn = p.bn FOR UPDATE OF cur) x"
    ).format(
        tbl=t.ident, net=sql.Identifier(schema, net), match=key_match(t, "cur"), batch=ident(batch)
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
        names=join_sql([ident(c.name) for c in cols]),
        ov=overriding,
        vals=join_sql([_target(n) for n in range(len(cols))]),
        net=sql.Identifier(schema, net),
        st=ident(status),
        cond=cond,
    )


def update_masks(t: TableInfo, status: str, overwrite: bool) -> sql.Composed:
    """SELECT the distinct sets of columns to write, one UPDATE statement per set."""
    flag = "o" if overwrite else "r"
    return sql.SQL(
        "SELECT DISTINCT {flags} FROM {st} s WHERE s.cur_present AND {acting}"
        " AND s.action IN ('update', 'insert')"
    ).format(
        flags=join_sql([ident(f"{flag}{n}") for n in range(len(t.writable))]),
        st=ident(status),
        acting=_acting(overwrite, cells=True),
    )


def apply_update(
    t: TableInfo, schema: str, net: str, status: str, overwrite: bool, mask: Sequence[bool]
) -> sql.Composed:
    """Write back exactly the columns of one mask, for the rows that have that mask."""
    cols = t.writable
    flag = "o" if overwrite else "r"
    sets = [
        sql.SQL("{} = {}").format(ident(c.name), _target(n))
        for n, c in enumerate(cols)
        if mask[n] and not c.identity_always
    ]
    match = join_sql(
        [
            sql.SQL("s.{} = {}").format(ident(f"{flag}{n}"), sql.Literal(bool(m)))
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
        sets=join_sql(sets),
        net=sql.Identifier(schema, net),
        st=ident(status),
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
        st=ident(status),
        key=key_match(t, "cur"),
        acting=_acting(overwrite),
    )


def conflict_examples(t: TableInfo, schema: str, net: str, status: str, limit: int) -> sql.Composed:
    """A few conflicting rows with key, columns, restore target, left value and current value."""
    cols = t.writable
    names = [c.name for c in cols]
    pairs = join_sql(
        [
            sql.SQL("{}, jsonb_build_array({}, {}, {})").format(
                sql.Literal(nm),
                as_text(_target(n)),
                as_text(_expected(n)),
                as_text(sql.SQL("cur.{}").format(ident(nm))),
            )
            for n, nm in enumerate(names)
        ]
    )
    return sql.SQL(
        "SELECT s.action, s.conflict_cols, jsonb_build_object({keys}), jsonb_build_object({pairs})"
        " FROM {st} s JOIN {net} p ON p.bn = s.bn LEFT JOIN {tbl} cur ON {match}"
        " WHERE s.status = 'conflict' ORDER BY p.bn LIMIT {lim}"
    ).format(
        keys=join_sql(
            [
                sql.SQL("{}, p.{}").format(sql.Literal(c.name), ident(f"k{n}"))
                for n, c in enumerate(t.key)
            ]
        ),
        pairs=pairs,
        st=ident(status),
        net=sql.Identifier(schema, net),
        tbl=t.ident,
        match=key_match(t, "cur"),
        lim=sql.Literal(limit),
    )
