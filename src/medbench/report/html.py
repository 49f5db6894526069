"""Building blocks of medbench's self-contained HTML pages (the run report and the study report).

Everything is inline: figures become PNG data URIs and the style sheet a ``<style>`` block, with no
script, external font or link, so a page reads offline and can be mailed or archived as it is.
Functions that take HTML say so; every other text argument is escaped here.
"""
from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medbench.report.figures import figure_to_png

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2530;
background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff;box-shadow:0 0 12px #0001}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:32px 0 10px;padding-bottom:4px;
border-bottom:2px solid #e3e6ea}h3{font-size:1.05em;margin:18px 0 6px}
.meta{color:#555;font-size:.92em}.meta code{font-size:.95em}
nav{margin:14px 0;font-size:.9em}nav a{margin-right:12px;color:#2b5d9b;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 12px;font-size:.9em}
th,td{border:1px solid #d9dde3;padding:4px 10px;text-align:right}th{background:#eef1f5}
td:first-child,th:first-child{text-align:left}tbody tr:nth-child(even){background:#fafbfc}
code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.85em;color:#555}
pre{background:#f3f4f6;padding:10px 14px;overflow:auto;font-size:.82em;border:1px solid #e1e4e8}
figure{display:inline-block;margin:6px 14px 10px 0;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
table.kv td{text-align:left;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.92em}
.note{color:#8a5a00;background:#fff7e6;border-left:3px solid #f0b400;padding:4px 10px;font-size:.9em}
ul.warnings{padding-left:0;list-style:none}ul.warnings .note{color:#8a1f11;background:#fdecea;
border-left-color:#d9534f;font-size:.95em;margin:4px 0}
"""


# ---- values as text ----

def fmt(v: Any, digits: int = 3) -> str:
    """A metric value for display: ints as they are, floats with ``digits`` decimals, null / NaN as n/a."""
    if v is None or isinstance(v, str) and not v.strip():
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "n/a" if not math.isfinite(v) else f"{float(v):.{digits}f}"
    return str(v)


def fmt_ci(v: Any, ci: Any = None, digits: int = 3) -> str:
    """``0.912 (0.880–0.940)`` when a two-number CI exists, else the value alone."""
    text = fmt(v, digits)
    if text == "n/a" or not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return text
    lo, hi = fmt(ci[0], digits), fmt(ci[1], digits)
    return text if "n/a" in (lo, hi) else f"{text} ({lo}–{hi})"


def escape(text: Any) -> str:
    """``text`` (anything, as ``str``) safe inside an element or a quoted attribute."""
    return html.escape(str(text), quote=True)


# ---- elements ----

def note(text: str) -> str:
    """A highlighted remark: what is missing or was worked around."""
    return f'<p class="note">{escape(text)}</p>'


def png_img(fig, name: str, caption: str) -> str:
    """A Matplotlib figure as an inline PNG with a caption; ``data-figure`` names it for tools and tests."""
    data = base64.b64encode(figure_to_png(fig)).decode("ascii")
    return (f'<figure><img data-figure="{escape(name)}" alt="{escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{escape(caption)}</figcaption></figure>')


def table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str | None = None,
          css_class: str | None = None) -> str:
    """``header`` and ``rows`` are HTML already (escape before); a cell that starts with ``<td`` is kept
    as it is (to carry attributes), any other is wrapped in one."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    ident = (f' id="{escape(table_id)}"' if table_id else "") + (f' class="{escape(css_class)}"' if css_class else "")
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---- the page ----

def section(section_id: str, heading: str, body: str) -> str:
    """One ``<section>`` with its ``<h2>``; ``body`` is HTML."""
    return f'<section id="{escape(section_id)}"><h2>{escape(heading)}</h2>{body}</section>'


def nav(sections: Sequence[tuple[str, str]]) -> str:
    """Links to ``(id, heading)`` sections."""
    return "<nav>" + "".join(f'<a href="#{escape(sid)}">{escape(h)}</a>' for sid, h in sections) + "</nav>"


def page(title: str, body: str, extra_css: str = "") -> str:
    """A whole document: ``title`` (text) in ``<title>`` and ``<h1>``, then ``body`` (HTML)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{escape(title)}</title><style>{CSS}{extra_css}</style></head><body><main>"
            f"<h1>{escape(title)}</h1>{body}</main></body></html>\n")
