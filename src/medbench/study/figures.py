"""The study report's figures, drawn from its summary: a forest plot of each dataset's arms and the CheXtransfer
scatter plots. Each returns a Matplotlib figure, or None when there is nothing to draw."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medbench.report import figures as F

COLORS = ["#2b5d9b", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085"]


def forest_figure(sec: dict):
    """Mean test AUC per arm with its bootstrap CI (bars) and each seed's test AUC (dots)."""
    arms = [a for a in sec["arms"] if a["test_auc"]["mean"] is not None]
    if not arms:
        return None
    fig = F.new_figure(8.0, 1.2 + 0.38 * len(arms))
    ax = fig.add_subplot()
    ys = np.arange(len(arms))[::-1]
    for y, a in zip(ys, arms):
        m = a["test_auc"]["mean"]
        ci = a["test_auc"].get("ci")
        color = "#c0392b" if a["best"] else "#2b5d9b"
        if ci:
            ax.plot(ci, [y, y], color=color, lw=2.2, solid_capstyle="butt")
        ax.plot([m], [y], "D", color=color, ms=6)
        vals = [v for v in a["test_auc"]["values"] if v is not None]
        ax.plot(vals, [y] * len(vals), "o", mfc="none", mec="#555", ms=4, alpha=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([a["arm"] if len(a["arm"]) <= 64 else a["arm"][:63] + "…" for a in arms], fontsize=8)
    ax.set_xlabel("test AUC")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(sec["title"], fontsize=10)
    return fig


def params_figure(points: Sequence[dict]):
    """Parameters (log scale) vs mean test AUC per arm: circles from scratch, triangles pretrained."""
    pts = [p for p in points if p["params"]]
    if not pts:
        return None
    fig = F.new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    sections = sorted({p["section"] for p in pts})
    for i, s in enumerate(sections):
        for pre, marker in ((False, "o"), (True, "^")):
            sel = [p for p in pts if p["section"] == s and bool(p["pretrained"]) == pre]
            if sel:
                ax.scatter([p["params"] for p in sel], [p["auc"] for p in sel], marker=marker, s=42,
                           color=COLORS[i % len(COLORS)], edgecolor="black", linewidths=0.4,
                           label=f"{s}, {'pretrained' if pre else 'scratch'}")
        for p in pts:
            if p["section"] == s:
                ax.annotate(str(p["model"]) + (f" −{p['truncate']}" if p["truncate"] else ""),
                            (p["params"], p["auc"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    return _parameters_axis(fig, ax, "mean test AUC", legend=True)


def boost_figure(boosts: Sequence[dict]):
    """Pretraining boost (with its CI) vs parameters (log scale)."""
    pts = [b for b in boosts if b["params"] and b["boost"] is not None]
    if not pts:
        return None
    fig = F.new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    for b in pts:
        if b["boost_ci"]:
            ax.plot([b["params"]] * 2, b["boost_ci"], color="#999", lw=1.5)
        ax.plot([b["params"]], [b["boost"]], "^", color="#c0392b", ms=7)
        ax.annotate(f"{b['model']}, {b['section']}", (b["params"], b["boost"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(0, color="black", lw=0.8)
    return _parameters_axis(fig, ax, "AUC pretrained − scratch", legend=False)


def truncation_figure(points: Sequence[dict]):
    """Truncated and full models: parameters (log scale) vs mean test AUC, one line per architecture."""
    pts = [p for p in points if p["params"]]
    lines: dict[tuple, list[dict]] = {}
    for p in pts:
        lines.setdefault((p["section"], p["model"], p["pretrained"]), []).append(p)
    lines = {k: v for k, v in lines.items() if len({p["truncate"] for p in v}) > 1}
    if not lines:
        return None
    fig = F.new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    for (sec, model, pre), v in lines.items():
        v = sorted(v, key=lambda p: p["truncate"])
        ax.plot([p["params"] for p in v], [p["auc"] for p in v], "-o", ms=5,
                label=f"{model} ({'pretrained' if pre else 'scratch'}), {sec}")
        for p in v:
            ax.annotate(f"−{p['truncate']}" if p["truncate"] else "full", (p["params"], p["auc"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    return _parameters_axis(fig, ax, "mean test AUC", legend=True)


def _parameters_axis(fig, ax, ylabel: str, legend: bool):
    """Parameters on a log x axis against ``ylabel``; the figure."""
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)
    return fig
