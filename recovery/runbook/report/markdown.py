"""The report document as Markdown."""

from __future__ import annotations

import re
from typing import Any

from .sections import cell_text, doc_title, fmt_time, report_sections, run_facts

_MD_SPECIAL = re.compile(r"([\\|<>*`])")


def _md(v: str) -> str:
    """A value in a Markdown line or table cell: one line, markup characters escaped."""
    return " ".join(_MD_SPECIAL.sub(r"\\\1", v).split())


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# {_md(doc_title(doc))}", ""]
    lines += [f"- **{k}**: {_md(v)}" for k, v in run_facts(doc)]
    window = doc.get("window") or {}
    for title, headers, rows, empty in report_sections(doc):
        lines += ["", f"## {title}", ""]
        if title.startswith("Rows changed") and window:
            lines += [
                f"Window: {fmt_time(window.get('start'))} to {fmt_time(window.get('end'))}"
                f" ({_md(cell_text(window.get('rule')))}).",
                "",
            ]
        if not rows:
            lines.append(empty)
            continue
        lines.append("| " + " | ".join(_md(h) for h in headers) + " |")
        lines.append("|" + "|".join("---" for _ in headers) + "|")
        lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    lines += ["", f"_Generated {fmt_time(doc.get('generated_at'))} by recovery._", ""]
    return "\n".join(lines)
