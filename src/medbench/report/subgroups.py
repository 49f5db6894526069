"""The run report's subgroup section: for each subgroup attribute (``--subgroup-cols`` / ``--subgroup-regex``) a
table of its subgroups (n, prevalence, AUC, ACC, sensitivity, specificity, each with its 95 % CI) and a table of
the largest gap per metric, naming the two subgroups.

Source: ``metrics.json["test"]["subgroups"]`` as :func:`medbench.metrics.subgroups.subgroup_metrics` writes it
(layout in that module's docstring). No such record: no section. Cells carry ``data-column`` / ``data-group`` /
``data-metric`` for tools and tests; an undefined value shows "n/a" with its reason in the cell's title.
"""
from __future__ import annotations

from medbench.report.html import escape, fmt, fmt_ci, note, table

Section = tuple[str, str, str]
SHOWN = (("auc", "AUC"), ("acc", "ACC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"))


def subgroup_sections(metrics: dict, split: str = "test") -> list[Section]:
    """``[("subgroups", heading, body)]`` when the split's metrics hold subgroup metrics, else ``[]``."""
    rec = (metrics.get(split) or {}).get("subgroups") if isinstance(metrics.get(split), dict) else None
    if not isinstance(rec, dict) or not rec.get("columns"):
        return []
    return [("subgroups", f"Subgroups ({split})", subgroup_body(rec))]


def _intro(rec: dict) -> str:
    pos = f"; sensitivity is the recall of {escape(rec['positive'])}" if rec.get("positive") else ""
    reps = rec.get("replicates") or 0
    cis = (f"95 % CIs from {reps} bootstrap resamples within each subgroup" if reps
           else "no CIs (bootstrap off)")
    thr = rec.get("threshold")
    return (f"<p>Metrics of each subgroup on its own images ({cis}; decisions at threshold "
            f"{escape(fmt(thr))}{pos}). The largest gap is max − min over the subgroups where the metric is "
            f"defined; images without a value form the subgroup <code>(none)</code>, left out of the gaps.</p>")


def _cell(col: str, group: str, key: str, g: dict) -> str:
    text = fmt_ci(g.get(key), g.get(f"{key}_ci"))
    why = (g.get("undefined") or {}).get(key)
    title = f' title="{escape(why)}"' if why else ""
    attrs = f'data-column="{escape(col)}" data-group="{escape(group)}" data-metric="{key}"{title}'
    return f"<td {attrs}>{escape(text)}</td>"


def _groups_table(col: str, groups: dict, binary: bool) -> str:
    shown = SHOWN if binary else SHOWN[:2]
    header = ["subgroup", "n"] + (["prevalence"] if binary else []) + [escape(h) for _, h in shown]
    rows = []
    for name, g in groups.items():
        cells = [escape(name), escape(fmt(g.get("n")))]
        if binary:
            cells.append(escape(fmt(g.get("prevalence"))))
        rows.append(cells + [_cell(col, name, key, g) for key, _ in shown])
    return table(header, rows, f"subgroups-{col}")


def _gaps_table(col: str, gaps: dict) -> str:
    rows = []
    for key, gap in gaps.items():
        if gap.get("gap") is None:
            rows.append([escape(key), f'<td data-column="{escape(col)}" data-gap="{key}">n/a</td>',
                         escape(gap.get("reason", "")), ""])
            continue
        hi, lo = gap["max"], gap["min"]
        rows.append([escape(key), f'<td data-column="{escape(col)}" data-gap="{key}">{escape(fmt(gap["gap"]))}</td>',
                     f"{escape(hi['group'])} ({escape(fmt(hi['value']))})",
                     f"{escape(lo['group'])} ({escape(fmt(lo['value']))})"])
    return table(["metric", "largest gap", "highest", "lowest"], rows, f"subgroup-gaps-{col}")


def subgroup_body(rec: dict) -> str:
    """The section's HTML: the introduction, then per attribute its subgroups and its gaps."""
    binary = rec.get("task") == "binary"
    parts = [_intro(rec)]
    for col, c in rec["columns"].items():
        groups = c.get("groups") or {}
        parts.append(f"<h3>{escape(col)}</h3>" + _groups_table(col, groups, binary)
                     + _gaps_table(col, c.get("gaps") or {}))
        notes = [f"{name}: {n}" for name, g in groups.items() for n in g.get("notes") or []]
        small = [name for name, g in groups.items() if (g.get("n") or 0) < 30]
        if small:
            notes.append(f"subgroup(s) {', '.join(small)} hold fewer than 30 images: their CIs are wide")
        parts += [note(n) for n in notes]
    return "".join(parts)
