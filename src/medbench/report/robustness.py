"""The run report's robustness section: for each corruption evaluation of the run
(``evaluations/NAME/robustness.json``, written by :func:`medbench.robustness.score_corruptions`) a figure of AUC and
ACC against severity (one line per corruption, severity 0 = clean) and a table of AUC by corruption and severity
with each corruption's relative drop. No such file: no section. A damaged file leaves a note instead.

Table cells carry ``data-corruption`` / ``data-severity`` for tools and tests.
"""
from __future__ import annotations

import json
from pathlib import Path

from medbench.report.figures import new_figure
from medbench.report.html import escape, fmt, note, png_img, table
from medbench.rundir import EVALUATIONS, ROBUSTNESS

Section = tuple[str, str, str]


def robustness_records(run_dir: str | Path) -> list[tuple[str, dict | None]]:
    """``(evaluation name, robustness.json or None when unreadable)`` for each corruption evaluation, by name."""
    root = Path(run_dir) / EVALUATIONS
    paths = sorted(root.glob(f"*/{ROBUSTNESS}")) if root.is_dir() else []
    out = []
    for p in paths:
        if p.parent.name.startswith("."):  # an evaluation being written
            continue
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
            ok = isinstance(rec, dict) and isinstance(rec.get("corruptions"), dict) and "clean" in rec
        except (OSError, ValueError):
            ok = False
        out.append((p.parent.name, rec if ok else None))
    return out


def robustness_sections(run_dir: str | Path) -> list[Section]:
    """``[("robustness", heading, body)]`` when the run has a corruption evaluation, else ``[]``."""
    found = robustness_records(run_dir)
    if not found:
        return []
    body = "".join(_evaluation_body(name, rec) for name, rec in found)
    return [("robustness", "Robustness to corruptions (test)", body)]


def robustness_figure(rec: dict, keys: tuple[str, ...] = ("auc", "acc")):
    """One panel per metric: the metric against severity (0 = clean), one line per corruption."""
    sev = [int(s) for s in rec["severities"]]
    fig = new_figure(5.2 * len(keys), 3.8)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        clean = rec["clean"].get(key)
        for name, c in rec["corruptions"].items():
            ys = [clean] + [c["severities"][str(s)].get(key) for s in sev]
            ax.plot([0] + sev, [float("nan") if y is None else y for y in ys], marker="o", ms=3, lw=1.2,
                    label=name)
        if clean is not None:
            ax.axhline(clean, color="0.5", ls="--", lw=0.8)
        ax.set_xticks([0] + sev, ["clean"] + [str(s) for s in sev])
        ax.set_xlabel("severity")
        ax.set_ylabel(key.upper())
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    return fig


def _evaluation_body(name: str, rec: dict | None) -> str:
    where = f"{EVALUATIONS}/{name}/{ROBUSTNESS}"
    if rec is None:
        return f"<h3>{escape(name)}</h3>" + note(f"{where} cannot be read; run medbench evaluate --corruptions again")
    intro = (f"<p>{escape(fmt(rec.get('n')))} test images under the <code>{escape(rec.get('preset'))}</code> "
             f"corruption preset (seed {escape(fmt(rec.get('seed')))}, decisions at threshold "
             f"{escape(fmt(rec.get('threshold')))}), from <code>{escape(where)}</code>. Relative drop: the mean over "
             f"severities of (clean − corrupted) / clean; mean relative AUC drop "
             f"{escape(fmt(rec.get('mean_relative_auc_drop')))}, ACC drop "
             f"{escape(fmt(rec.get('mean_relative_acc_drop')))}.</p>")
    try:
        fig = png_img(robustness_figure(rec), f"robustness-{name}", "AUC and ACC against corruption severity")
    except (KeyError, TypeError, ValueError) as e:
        fig = note(f"{where}: no figure ({e})")
    return f"<h3>{escape(name)}</h3>" + intro + fig + _auc_table(name, rec)


def _auc_table(name: str, rec: dict) -> str:
    sev = [str(s) for s in rec.get("severities") or []]
    header = ["corruption", "parameter", "clean"] + [f"severity {s}" for s in sev] + ["relative AUC drop"]
    rows = []
    for cname, c in rec["corruptions"].items():
        levels = c.get("levels") or {}
        param = f"{escape(c.get('parameter', ''))}: " + " / ".join(escape(fmt(levels.get(s))) for s in sev)
        cells = [f'<td data-corruption="{escape(cname)}" data-severity="{s}">'
                 f'{escape(fmt((c["severities"].get(s) or {}).get("auc")))}</td>' for s in sev]
        rows.append([escape(cname), param, escape(fmt(rec["clean"].get("auc")))] + cells
                     + [escape(fmt(c.get("relative_auc_drop")))])
    return table(header, rows, f"robustness-{name}")
