"""The report files of a run: report.md, report.json and report.html."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg

from ...db import DEFAULT_SCHEMA
from .html import render_html
from .markdown import render_markdown
from .model import build


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(
    conn: psycopg.Connection,
    run_id: int,
    out_dir: str | Path | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> dict[str, Path]:
    """Write report.md, report.json and report.html of run `run_id` into out_dir
    (default ./runbook-reports/run-<run_id>/, created as needed) and return their absolute
    paths as {"md": ..., "json": ..., "html": ...}.  Each file is replaced atomically."""
    doc = build(conn, run_id, schema=schema)
    out = (
        Path(out_dir) if out_dir is not None else Path("runbook-reports") / f"run-{run_id}"
    ).absolute()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "html": out / "report.html"}
    _write(paths["json"], json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
    _write(paths["md"], render_markdown(doc))
    _write(paths["html"], render_html(doc))
    return paths
