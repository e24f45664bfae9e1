"""`recovery runbook list/validate/run/resume`."""

from __future__ import annotations

from typing import Any

import click

from ..errors import RecoveryError
from ..runbook import engine as rbm
from ..text import table
from .common import Ctx, command, open_conn


@click.group("runbook")
def runbook_group() -> None:
    """Run incident runbooks (runbooks/*.yaml): list, validate, run, resume."""


_REPORT_DIR_HELP = (
    "Write the run's report (Markdown, JSON, HTML) into DIR/run-ID/ (default ./runbook-reports)."
)


def _runbook_errors(errors: list[str]) -> None:
    """Every problem of a runbook on its own line, `error: FILE:LINE: ...`; exit 1."""
    for line in errors[:-1]:
        click.echo(f"error: {line}", err=True)
    raise RecoveryError(errors[-1])


def _runbook_result(c: Ctx, res: Any) -> None:
    if c.json:
        c.emit(res.to_dict())
    if res.report:
        c.out(f"report: {res.report}")
    if res.status == "done":
        c.out(f"run {res.run_id} ({res.name}) is done" + (" (dry run)" if res.dry_run else ""))
    elif res.exit_code == 0:
        c.out(res.message)  # paused: resume continues
    else:
        click.echo(res.message if res.status == "waiting" else f"error: {res.message}", err=True)
        click.get_current_context().exit(res.exit_code)


@command("list", group=runbook_group)
@click.option(
    "--dir",
    "directory",
    default="runbooks",
    show_default=True,
    help="Directory of runbook files (*.yaml).",
)
@click.option("--runs", is_flag=True, help="List recent runs recorded in the database instead.")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="With --runs: how many, newest first.",
)
def runbook_list(c: Ctx, directory: str, runs: bool, limit: int) -> None:
    """List runbooks (name, description, parameters), or recent runs with --runs."""

    if runs:
        with open_conn(c) as conn:
            found = rbm.list_runs(conn, limit=limit, schema=c.schema)
        if c.json:
            c.emit(found)
        else:
            c.out(
                table(
                    ["run", "runbook", "status", "at step", "dry run", "by", "started", "error"],
                    [
                        [
                            r["run_id"],
                            r["name"],
                            r["status"],
                            r["at_step"] or "",
                            "yes" if r["dry_run"] else "",
                            r["started_by"],
                            r["started_at"][:19],
                            r["error"] or "",
                        ]
                        for r in found
                    ],
                )
                if found
                else "no runbook run recorded"
            )
        return
    books = rbm.list_runbooks(directory)
    if c.json:
        c.emit(books)
        return
    for b in books:
        if "error" in b:
            c.out(f"{b['file']}: INVALID: {b['error']}\n")
            continue
        c.out(f"{b['name']} ({b['file']})\n  {b['description'].strip()}")
        for name, p in b["parameters"].items():
            default = (
                "required"
                if p["required"]
                else "optional"
                if p["default"] is None
                else f"default {p['default']!r}"
            )
            c.out(
                f"  --param {name}=<{p['type']}>  {default}"
                + (f": {p['description']}" if p["description"] else "")
            )
        c.out("")
    if not books:
        c.out(f"no runbook (*.yaml) in {directory}")


@command("validate", group=runbook_group)
@click.argument("file", type=click.Path(dir_okay=False))
def runbook_validate(c: Ctx, file: str) -> None:
    """Check a runbook file: every problem with its line and a fix (exit 1 if any)."""

    try:
        rb = rbm.load(file)
    except rbm.RunbookInvalid as exc:
        if c.json:
            c.emit({"file": file, "valid": False, "errors": exc.errors})
        _runbook_errors(exc.errors)
    if c.json:
        c.emit(
            {
                "file": file,
                "valid": True,
                "name": rb.name,
                "parameters": list(rb.params),
                "steps": [{"id": s.id, "kind": s.kind} for s in rb.steps],
            }
        )
    else:
        c.out(
            f"{file}: runbook {rb.name} is valid: {len(rb.params)} parameter(s), "
            f"{len(rb.steps)} step(s)"
        )


@command("run", group=runbook_group)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="K=V",
    help="Value of a runbook parameter (repeatable).",
)
@click.option(
    "--dry-run", is_flag=True, help="Run only the read-only steps; show what the others would do."
)
@click.option("--report-dir", metavar="DIR", help=_REPORT_DIR_HELP)
def runbook_run(
    c: Ctx, file: str, params: tuple[str, ...], dry_run: bool, report_dir: str | None
) -> None:
    """Run a runbook's steps in order, unattended: no prompt (large plans wait for an
    approval step); exit 0 done, 1 error, 2 a check failed, 3 waiting for approval."""

    try:
        rb = rbm.load(file)
    except rbm.RunbookInvalid as exc:
        _runbook_errors(exc.errors)
    values = rbm.bind_params(rb, rbm.parse_param_args(params))
    with open_conn(c) as conn:
        res = rbm.run(
            conn, rb, values, dry_run=dry_run, schema=c.schema, echo=c.out, report_dir=report_dir
        )
    _runbook_result(c, res)


@command("resume", group=runbook_group)
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--report-dir", metavar="DIR", help=_REPORT_DIR_HELP)
def runbook_resume(c: Ctx, run_id: int, report_dir: str | None) -> None:
    """Continue run RUN from its first unfinished step; finished steps never run again."""

    with open_conn(c) as conn:
        res = rbm.resume(conn, run_id, schema=c.schema, echo=c.out, report_dir=report_dir)
    _runbook_result(c, res)
