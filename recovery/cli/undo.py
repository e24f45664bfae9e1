"""`recovery rollback`: undo the selected changes (or resume a batched undo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import RecoveryError
from ..undo.engine import resume_rollback
from ..undo.engine import rollback as rollback_fn
from . import render
from .common import Ctx, apply_options, command, confirm, make_selector, open_conn, selector_options


@command("rollback")
@selector_options
@click.option(
    "--on-conflict",
    type=click.Choice(["fail", "skip", "overwrite"]),
    default="fail",
    show_default=True,
    help="fail: change nothing (exit 2); skip: undo everything "
    "else; overwrite: undo conflicting rows too.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option(
    "--sql",
    "sql_file",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the exact SQL to this file.",
)
@click.option("--batch-size", type=int, help="Commit every N rows; resumable with --resume.")
@click.option(
    "--resume",
    "resume_op",
    type=int,
    metavar="OP",
    help="Continue batched undo operation OP after an interruption.",
)
@apply_options
def rollback_cmd(
    c: Ctx,
    on_conflict: str,
    dry_run: bool,
    sql_file: str | None,
    batch_size: int | None,
    resume_op: int | None,
    lock_timeout: str,
    fire_triggers: bool,
    approval: int | None,
    **kw: Any,
) -> None:
    """Undo the selected changes, keeping every later legitimate write."""
    sel = make_selector(kw)
    with open_conn(c) as conn:
        if resume_op is not None:
            if not sel.is_empty():
                raise RecoveryError("--resume takes no selector: the operation has its own")
            if dry_run or sql_file or batch_size is not None or approval is not None:
                raise RecoveryError(
                    "--resume continues the saved plan with its own batch size (approved when "
                    "it started): it takes no --dry-run, --sql, --batch-size or --approval"
                )
            confirm(c, f"Resume undo operation {resume_op}?")
            report = resume_rollback(
                conn,
                resume_op,
                on_conflict=on_conflict if on_conflict != "fail" else None,
                schema=c.schema,
            )
        else:
            sql_out: list[str] | None = [] if sql_file else None
            if not dry_run and not c.yes:
                plan = rollback_fn(
                    conn,
                    sel,
                    on_conflict=on_conflict,
                    dry_run=True,
                    lock_timeout=lock_timeout,
                    fire_triggers=fire_triggers,
                    schema=c.schema,
                )
                c.out(render.rollback(plan))
                confirm(c, "Apply this undo?")
            report = rollback_fn(
                conn,
                sel,
                on_conflict=on_conflict,
                dry_run=dry_run,
                batch_size=batch_size,
                lock_timeout=lock_timeout,
                fire_triggers=fire_triggers,
                sql_out=sql_out,
                schema=c.schema,
                approval=approval,
            )
            if sql_file and sql_out is not None:
                Path(sql_file).write_text("\n".join(sql_out) + "\n")
    if c.json:
        c.emit(report.to_dict())
    else:
        c.out(render.rollback(report))
