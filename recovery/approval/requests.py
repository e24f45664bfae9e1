"""Two-person approval: an operation larger than the thresholds waits for another user.

The database keeps the record and enforces the rules (sql/approval.sql): the functions
request_approval, approve, refuse_approval and authorize are the only writers of
`approval_requests` and `approvals`, and record session_user and the time.  A request
is for one exact plan (the SHA-256 of its canonical JSON); an approval only counts
when it comes from a database user other than the requester, for that plan; the
operation consumes the request with authorize() inside the transaction that applies
it, so a failed apply leaves it unconsumed, and a second run needs a new approval.

`gate()` is what rollback() and restore() call between planning and applying; a plan
that needs a request raises ApprovalNeeded there, and `pending()` records the request
once the applying transaction is rolled back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..db import DEFAULT_SCHEMA
from ..errors import ApprovalRequired, RecoveryError
from ..schema import require_schema
from .plans import plan_hash

DEFAULTS = {"approval_rows": 10000, "approval_tables": 5, "approvals_required": 1}
OPEN = ("pending", "approved")


class ApprovalPending(ApprovalRequired):
    """The operation was recorded as approval request `req_id` and did not run: exit 3."""

    def __init__(self, message: str, req_id: int) -> None:
        super().__init__(message)
        self.req_id = req_id


class ApprovalNeeded(ApprovalRequired):
    """Raised by gate() inside the applying transaction: the plan needs an approved request
    and has none.  The caller lets that transaction roll back, then turns this into
    ApprovalPending with pending(), which records the request."""

    def __init__(
        self,
        kind: str,
        plan: dict[str, Any],
        rows: int,
        tables: int,
        *,
        schema: str,
        problem: str | None,
        limit_rows: int,
        limit_tables: int,
        what: str,
    ) -> None:
        super().__init__(f"{what} needs an approval (the request is not recorded yet)")
        self.kind, self.plan, self.rows, self.tables = kind, plan, rows, tables
        self.schema, self.problem, self.what = schema, problem, what
        self.limit_rows, self.limit_tables = limit_rows, limit_tables


@dataclass
class Thresholds:
    rows: int  # more rows than this need an approval (meta approval_rows)
    tables: int  # more tables than this need an approval (meta approval_tables)
    required: int  # approvals needed, from users other than the requester


@dataclass
class Request:
    req_id: int
    kind: str
    plan: dict[str, Any]
    plan_hash: str
    rows: int
    tables: int
    required: int
    requested_by: str
    requested_at: str
    status: str  # pending | approved | executed | refused
    executed_at: str | None  # when it was executed (or refused)
    executed_by: str | None  # by whom
    approvals: list[dict[str, Any]] = field(default_factory=list)  # approved_by, approved_at

    @property
    def approved_by(self) -> list[str]:
        """Approvers that count (the requester's own approval never does)."""
        return [a["approved_by"] for a in self.approvals if a["approved_by"] != self.requested_by]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _s(schema: str) -> sql.Identifier:
    return sql.Identifier(schema)


def _mapped(exc: psycopg.Error) -> RecoveryError | None:
    """The one-line error a user can act on for the approval functions' SQLSTATEs."""
    state = getattr(exc, "sqlstate", None)
    if state not in ("RC002", "RC003", "RC004"):
        return None
    diag = exc.diag
    msg = (diag.message_primary or str(exc)).removeprefix("recovery: ")
    if state == "RC003" and diag.message_hint:
        msg += f": {diag.message_hint}"
    return ApprovalRequired(msg) if state == "RC002" else RecoveryError(msg)


def _call(conn: psycopg.Connection, query: sql.Composed, params: Sequence[Any]) -> Any:
    try:
        row = conn.execute(query, params).fetchone()
    except psycopg.Error as exc:
        mapped = _mapped(exc)
        if mapped is None:
            raise
        raise mapped from None
    return row[0] if row else None


def thresholds(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> Thresholds:
    """The thresholds in the recovery schema's meta table (no transaction control)."""
    found: dict[str, str] = dict(
        conn.execute(
            sql.SQL("SELECT key, value FROM {}.meta WHERE key = ANY(%s)").format(_s(schema)),
            [list(DEFAULTS)],
        ).fetchall()
    )
    values = {}
    for key, default in DEFAULTS.items():
        raw = found.get(key, default)
        try:
            values[key] = int(raw)
        except (TypeError, ValueError):
            raise RecoveryError(
                f"{schema}.meta key {key} is {raw!r}, not a whole number: the schema's owner "
                f"fixes it with UPDATE {schema}.meta SET value = '{default}' WHERE key = "
                f"'{key}'"
            ) from None
    return Thresholds(
        values["approval_rows"], values["approval_tables"], max(values["approvals_required"], 1)
    )


def needs_approval(
    conn: psycopg.Connection,
    rows: int,
    tables: int,
    *,
    schema: str = DEFAULT_SCHEMA,
    max_rows: int | None = None,
    max_tables: int | None = None,
) -> bool:
    """Whether an operation writing `rows` rows in `tables` tables needs an approval.

    More rows than the row threshold, or more tables than the table threshold, do;
    max_rows / max_tables (a runbook's own, say) can only lower the meta table's,
    which only the schema's owner may change: a parameter cannot lift the rule.
    """
    th = thresholds(conn, schema)
    limit_rows = th.rows if max_rows is None else min(max_rows, th.rows)
    limit_tables = th.tables if max_tables is None else min(max_tables, th.tables)
    return rows > limit_rows or tables > limit_tables


_SELECT = """
SELECT r.req_id, r.kind, r.plan, r.plan_hash, r.rows, r.tables, r.required, r.requested_by,
       r.requested_at::text, r.status, r.executed_at::text, r.executed_by,
       coalesce((SELECT jsonb_agg(jsonb_build_object('approved_by', a.approved_by,
                                                     'approved_at', a.approved_at::text)
                                  ORDER BY a.approved_at, a.approved_by)
                 FROM {s}.approvals a WHERE a.req_id = r.req_id), '[]'::jsonb)
FROM {s}.approval_requests r
"""


def _fetch(conn: psycopg.Connection, req_id: int, schema: str) -> Request | None:
    """Request req_id, read in the current transaction (none ended)."""
    row = conn.execute(
        sql.SQL(_SELECT + " WHERE r.req_id = %s").format(s=_s(schema)), [req_id]
    ).fetchone()
    return Request(*row) if row else None


def get(conn: psycopg.Connection, req_id: int, schema: str = DEFAULT_SCHEMA) -> Request:
    """Approval request req_id; RecoveryError (exit 1) if there is none."""
    with conn.transaction():
        require_schema(conn, schema)
        req = _fetch(conn, req_id, schema)
    if req is None:
        raise RecoveryError(
            f"no approval request {req_id}: `recovery approve --list` lists the open ones"
        )
    return req


def list_requests(
    conn: psycopg.Connection,
    schema: str = DEFAULT_SCHEMA,
    status: str | Sequence[str] | None = None,
) -> list[Request]:
    """Approval requests, oldest first; only those of the given status(es) if any."""
    statuses = [status] if isinstance(status, str) else list(status or [])
    where = sql.SQL(" WHERE r.status = ANY(%s)" if statuses else "")
    with conn.transaction():
        require_schema(conn, schema)
        rows = conn.execute(
            sql.SQL(_SELECT).format(s=_s(schema)) + where + sql.SQL(" ORDER BY r.req_id"),
            [statuses] if statuses else None,
        ).fetchall()
    return [Request(*r) for r in rows]


def request(
    conn: psycopg.Connection,
    kind: str,
    plan: dict[str, Any],
    rows: int,
    tables: int,
    schema: str = DEFAULT_SCHEMA,
) -> Request:
    """Record a pending request for this plan, or find the open one this user made for it.

    Committed in a transaction of its own (the request must outlive the refused
    operation); inside a caller's open transaction, written in a savepoint of it: the
    request exists for others once the caller commits.
    """
    with conn.transaction():
        req_id = _call(
            conn,
            sql.SQL(
                "SELECT {}.request_approval(%s::text, %s::jsonb, %s::text, %s::bigint, %s::int)"
            ).format(_s(schema)),
            [kind, Jsonb(plan), plan_hash(plan), rows, tables],
        )
        return get(conn, int(req_id), schema)


def approve(
    conn: psycopg.Connection, req_id: int, schema: str = DEFAULT_SCHEMA, refuse: bool = False
) -> Request:
    """Approve request req_id as this connection's database user (or refuse it); committed
    in a transaction of its own (a savepoint of the caller's, when one is open).

    The approval is for the plan as stored with the request (shown to the approver
    first): a stored plan that does not match its hash is refused here.  The database
    refuses an approval by the requester (ApprovalRequired, exit 3) and one of a
    request already executed or refused (RecoveryError, exit 1).
    """
    with conn.transaction():
        req = get(conn, req_id, schema)
        if refuse:
            _call(
                conn, sql.SQL("SELECT {}.refuse_approval(%s::bigint)").format(_s(schema)), [req_id]
            )
        else:
            if plan_hash(req.plan) != req.plan_hash:
                raise RecoveryError(
                    f"the plan stored with approval request {req_id} does not match its hash: "
                    "it was not written by recovery; not approved"
                )
            _call(
                conn,
                sql.SQL("SELECT {}.approve(%s::bigint, %s::text)").format(_s(schema)),
                [req_id, req.plan_hash],
            )
        return get(conn, req_id, schema)


def authorize(
    conn: psycopg.Connection, req_id: int, hash: str, schema: str = DEFAULT_SCHEMA
) -> None:
    """Consume approved request req_id for the plan with this hash, in the current
    transaction (no commit): the caller applies the operation, then commits.

    Raises ApprovalRequired when the request is not approved, is for another plan, was
    used already, or lacks approvals by users other than its requester and this user.
    """
    _call(
        conn,
        sql.SQL("SELECT {}.authorize(%s::bigint, %s::text)").format(_s(schema)),
        [req_id, hash],
    )


def _find_approved(conn: psycopg.Connection, kind: str, hash: str, schema: str) -> int | None:
    """An approved request for exactly this plan that this user may run (its own first)."""
    row = conn.execute(
        sql.SQL(
            "SELECT r.req_id FROM {s}.approval_requests r"
            " WHERE r.kind = %s AND r.plan_hash = %s AND r.status = 'approved'"
            " AND (SELECT count(*) FROM {s}.approvals a WHERE a.req_id = r.req_id"
            "      AND a.plan_hash = r.plan_hash"
            "      AND a.approved_by NOT IN (r.requested_by, session_user::text)) >= r.required"
            " ORDER BY r.requested_by = session_user::text DESC, r.req_id LIMIT 1"
        ).format(s=_s(schema)),
        [kind, hash],
    ).fetchone()
    return int(row[0]) if row else None


def gate(
    conn: psycopg.Connection,
    kind: str,
    plan: dict[str, Any],
    rows: int,
    tables: int,
    *,
    schema: str = DEFAULT_SCHEMA,
    approval: int | None = None,
    max_rows: int | None = None,
    max_tables: int | None = None,
    what: str = "this operation",
) -> int | None:
    """Call inside the transaction that is about to apply `plan`, before it writes.

    Returns None when the plan is within the thresholds, or the id of the approved
    request it consumed (request `approval`, else one approved for exactly this plan).
    Otherwise raises ApprovalNeeded: the caller lets the applying transaction (or
    savepoint) roll back, then raises `pending(conn, needed)`, which records the plan as
    a pending request (or finds this user's open one): ApprovalPending (exit 3).
    No transaction is ended here.
    """
    th = thresholds(conn, schema)
    # Given limits can only lower the meta table's (see needs_approval).
    limit_rows = th.rows if max_rows is None else min(max_rows, th.rows)
    limit_tables = th.tables if max_tables is None else min(max_tables, th.tables)
    if rows <= limit_rows and tables <= limit_tables:
        return None
    h = plan_hash(plan)
    problem = None
    if approval is not None:
        given = _fetch(conn, approval, schema)
        if given is None:
            raise RecoveryError(
                f"no approval request {approval}: `recovery approve --list` lists the open ones"
            )
        if given.kind != kind:
            raise RecoveryError(
                f"approval request {approval} is for a {given.kind}, not a "
                f"{kind}: nothing was changed"
            )
        candidate: int | None = approval
    else:
        candidate = _find_approved(conn, kind, h, schema)
    if candidate is not None:
        try:
            authorize(conn, candidate, h, schema)
            return candidate
        except ApprovalRequired as exc:
            problem = str(exc)
    raise ApprovalNeeded(
        kind,
        plan,
        rows,
        tables,
        schema=schema,
        problem=problem,
        limit_rows=limit_rows,
        limit_tables=limit_tables,
        what=what,
    )


def pending(conn: psycopg.Connection, needed: ApprovalNeeded) -> ApprovalPending:
    """Record the request gate() found missing (once the applying transaction is rolled
    back) and return the ApprovalPending to raise, saying what to do next.

    Committed on its own; inside a caller's open transaction, recorded in it (and said)."""
    kind, plan, rows, tables = needed.kind, needed.plan, needed.rows, needed.tables
    what, problem = needed.what, needed.problem
    limit_rows, limit_tables = needed.limit_rows, needed.limit_tables
    yours = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    req = request(conn, kind, plan, rows, tables, needed.schema)
    head = f"{problem}; " if problem else ""
    size = (
        f"{what} changes {rows} rows in {tables} tables, more than the approval threshold "
        f"({limit_rows} rows or {limit_tables} tables): nothing was changed; "
    )
    if req.status == "approved":
        # This user's own request for this plan is approved, but `approval` named another.
        tail = (
            f"approval request {req.req_id} for exactly this plan is approved: run this "
            f"command again with --approval {req.req_id}"
        )
    else:
        need = max(req.required - len(req.approved_by), 1)
        who = (
            "another database user must run"
            if need == 1
            else f"{need} more database users must each run"
        )
        tail = f"{who} `recovery approve {req.req_id}`, then run this command again"
    if yours:
        tail += (
            f" (request {req.req_id} is recorded in your open transaction: others see "
            "it once you commit)"
        )
    return ApprovalPending(head + size + tail, req.req_id)
