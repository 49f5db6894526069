"""The study report's sections rendered as a self-contained HTML page (inline PNG figures, no script) and as
Markdown (the same tables; figures only in the HTML)."""
from __future__ import annotations

from collections.abc import Sequence

from medbench.report.html import escape, nav, note, page, png_img, section, table
from medbench.study.tables import Block, Table

STUDY_CSS = "table.study th{text-align:center;vertical-align:bottom}table.study td.t{text-align:left}"
Sections = Sequence[tuple[str, str, list[Block]]]


def render_html(summary: dict, sections: Sections) -> str:
    parts = [section(sid, heading, "".join(_block_html(b) for b in blocks)) for sid, heading, blocks in sections]
    c = summary["counts"]
    meta = (f"<p class=\"meta\">{c['total']} runs: {c['done']} done, {c['failed']} failed, {c['running']} running, "
            f"{c['pending']} pending, {c['missing']} missing from the store · axes: "
            f"{escape(', '.join(summary['axes']) or 'none')}<br>Results store <code>{escape(summary['database'])}"
            f"</code> · {summary['replicates']} bootstrap resamples, seed {summary['seed']}<br>Generated "
            f"{escape(summary['generated'])} by medbench</p>")
    links = nav([(sid, heading) for sid, heading, _ in sections])
    return page(f"Study report: {summary['study']}", meta + links + "".join(parts), STUDY_CSS)


def _block_html(b: Block) -> str:
    if b.kind == "h3":
        return f"<h3>{escape(b.text)}</h3>"
    if b.kind == "p":
        return f"<p>{escape(b.text)}</p>"
    if b.kind == "note":
        return note(b.text)
    if b.kind == "table":
        return table_html(b.table)
    if b.kind == "figure":
        return png_img(b.figure, b.name, b.text)
    return ""


def table_html(t: Table) -> str:
    """The table with bold cells, left-aligned text columns and a data attribute naming each row's first cell."""
    rows = []
    for i, r in enumerate(t.rows):
        cells = []
        for j, c in enumerate(r):
            text = f"<b>{escape(c)}</b>" if t.is_bold(i, j) else escape(c)
            attrs = (f' data-{t.first_attr}="{escape(c)}"' if j == 0 else "") + \
                (' class="t"' if j in t.text_cols else "")
            cells.append(f"<td{attrs}>{text}</td>" if attrs else text)
        rows.append(cells)
    return table([escape(h) for h in t.header], rows, t.id, css_class="study")


def render_markdown(summary: dict, sections: Sections) -> str:
    c = summary["counts"]
    lines = [f"# Study report: {summary['study']}", "",
             f"{c['total']} runs: {c['done']} done, {c['failed']} failed, {c['running']} running, {c['pending']} "
             f"pending, {c['missing']} missing. Generated {summary['generated']}; {summary['replicates']} bootstrap "
             f"resamples (seed {summary['seed']}). Figures: report.html.", ""]
    for _sid, heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for b in blocks:
            if b.kind == "h3":
                lines += [f"### {b.text}", ""]
            elif b.kind == "p":
                lines += [b.text, ""]
            elif b.kind == "note":
                lines += [f"> {b.text}", ""]
            elif b.kind == "table":
                lines += [table_markdown(b.table), ""]
    return "\n".join(lines).rstrip() + "\n"


def table_markdown(t: Table) -> str:
    def cell(c: str, bold: bool) -> str:
        c = str(c).replace("|", "\\|").replace("\n", " ")
        return f"**{c}**" if bold and c else c

    lines = ["| " + " | ".join(cell(h, False) for h in t.header) + " |",
             "|" + "|".join(":--" if j in t.text_cols else "--:" for j in range(len(t.header))) + "|"]
    for i, r in enumerate(t.rows):
        lines.append("| " + " | ".join(cell(c, t.is_bold(i, j)) for j, c in enumerate(r)) + " |")
    return "\n".join(lines)
