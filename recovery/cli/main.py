"""The `recovery` command line: the `main` group, with one module per command group
(`common` holds what they share)."""

from __future__ import annotations

from typing import Any

import click

from .approval import approve_cmd
from .capture import capture_group
from .common import Ctx, Group, global_options, merge
from .journal import changes_cmd, diff_cmd
from .ops import demo_cmd, guard_cmd, init_cmd, mark_cmd, operations_cmd, prune_cmd
from .runbook import runbook_group
from .snapshot import restore_cmd, snapshot_group
from .undo import rollback_cmd


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recovery")
@global_options
@click.pass_context
def main(ctx: click.Context, /, **kw: Any) -> None:
    """Undo a bad deploy's data damage on PostgreSQL: capture, selective undo, guardrails.

    Exit codes: 0 done; 1 error, nothing changed; 2 refused because of conflicts or a
    failed verification (snapshot verify), nothing changed; 3 refused because approval
    is needed or a cap was hit.
    """
    ctx.obj = Ctx()
    merge(ctx, kw)


for _cmd in (
    init_cmd,
    capture_group,
    changes_cmd,
    diff_cmd,
    rollback_cmd,
    approve_cmd,
    mark_cmd,
    guard_cmd,
    operations_cmd,
    prune_cmd,
    snapshot_group,
    restore_cmd,
    runbook_group,
    demo_cmd,
):
    main.add_command(_cmd)


if __name__ == "__main__":  # pragma: no cover
    main()
