"""Small self-contained HTML pages (tables, preformatted text) for the Snakemake report."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: bold; padding: 4px 0; white-space: nowrap; }
pre { background: #f7f7f7; padding: 8px; border: 1px solid #ddd; }
"""


def fmt(value: object, digits: int = 3) -> str:
    """Human-readable cell text: floats rounded, None/NaN as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(value: object) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"<td class=\"num\">{html.escape(fmt(value))}</td>" if numeric else f"<td>{html.escape(fmt(value))}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], caption: str | None = None) -> str:
    """An HTML table; every cell is escaped (cells are formatted with :func:`fmt`)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>\n"


def pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>\n"


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>\n"


def page(title: str, *parts: str) -> str:
    """A complete HTML document with ``title`` as heading and the given (already HTML) parts."""
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body><h2>{html.escape(title)}</h2>\n{''.join(parts)}</body></html>\n")
