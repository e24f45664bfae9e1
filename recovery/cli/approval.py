"""`recovery approve`: list, show, approve or refuse approval requests."""

from __future__ import annotations

import click

from .. import approval as approval_mod
from ..errors import RecoveryError
from . import render
from .common import Ctx, command, confirm, open_conn


@command("approve")
@click.argument("req", type=int, required=False)
@click.option(
    "--list",
    "list_all",
    is_flag=True,
    help="List the open (pending and approved) requests instead.",
)
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="With --list: every request, closed ones too (executed, refused, expired).",
)
@click.option(
    "--refuse", is_flag=True, help="Refuse the request: it can then be neither approved nor used."
)
def approve_cmd(c: Ctx, req: int | None, list_all: bool, every: bool, refuse: bool) -> None:
    """Approve (or refuse) large operation REQ that another database user requested.

    The approval is recorded under the database user this command connects as, for
    the exact plan shown; the requester then runs the same command again.
    """
    if (req is None) != list_all or (list_all and refuse):
        raise RecoveryError("give a request number REQ (with --refuse to refuse it), or --list")
    if every and not list_all:
        raise RecoveryError("--all goes with --list")
    with open_conn(c) as conn:
        if list_all:
            reqs = approval_mod.list_requests(
                conn, c.schema, status=None if every else approval_mod.OPEN
            )
            if c.json:
                c.emit([r.to_dict() for r in reqs])
            else:
                c.out(render.approval_requests(reqs))
            return
        assert req is not None
        current = approval_mod.get(conn, req, c.schema)
        c.out(render.approval_request(current))
        # fetchone() is typed Optional; a SELECT without FROM returns one row
        me = conn.execute("SELECT session_user").fetchone()[0]  # type: ignore[index]
        conn.rollback()  # not open while the question waits; approve() then commits its own
        confirm(c, f"{'Refuse' if refuse else 'Approve'} request {req} as database user {me}?")
        done = approval_mod.approve(conn, req, c.schema, refuse=refuse)
    if c.json:
        c.emit(done.to_dict())
    elif refuse:
        c.out(f"refused approval request {req} as {me}")
    elif done.status == "approved":
        c.out(
            f"approved request {req} as {me}: {done.requested_by} can now run the same "
            f"command again (or with --approval {req})"
        )
    else:
        c.out(
            f"recorded the approval of request {req} by {me}: {len(done.approved_by)} of "
            f"{done.required} needed, still {done.status}"
        )
