"""The tune report, ``DIR/report.html``: the best trial, the optimisation history, the per-epoch values that pruning
judged, the parameter importances and a parallel-coordinates plot (inline PNGs, no script, like the study report).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import matplotlib
import numpy as np

from medbench.fileio import write_text
from medbench.report import figures as F
from medbench.report.html import escape, fmt, nav, note, page, png_img, section, table

MIN_FOR_IMPORTANCE = 4  # complete trials below which importances are noise (and fANOVA may not fit)
STATE_COLORS = {"complete": "#2b5d9b", "pruned": "#999999", "fail": "#c0392b"}


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def history_figure(trials, metric: str, maximize: bool):
    """Each trial's value by number (pruned: their last reported value, in grey) and the best so far."""
    fig = F.new_figure(7.0, 3.6)
    ax = fig.add_subplot()
    done = [t for t in trials if t.state.name == "COMPLETE" and _finite(t.value)]
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
    if pruned:
        ax.plot([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned], "x",
                color=STATE_COLORS["pruned"], label="pruned (last epoch reported)")
    if done:
        xs, ys = [t.number for t in done], [t.value for t in done]
        ax.plot(xs, ys, "o", color=STATE_COLORS["complete"], label="complete")
        best = np.maximum.accumulate(ys) if maximize else np.minimum.accumulate(ys)
        ax.step(xs, best, where="post", color="#c0392b", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"val {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def curves_figure(trials, metric: str):
    """The per-epoch validation metric of every trial (pruned dashed): what the pruner compared."""
    fig = F.new_figure(7.0, 3.6)
    ax = fig.add_subplot()
    for t in trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        pruned = t.state.name == "PRUNED"
        ax.plot(steps, [t.intermediate_values[s] for s in steps], "--" if pruned else "-", lw=1,
                color=STATE_COLORS["pruned" if pruned else "complete"], alpha=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"val {metric}")
    ax.grid(alpha=0.3)
    return fig


def importance_figure(importances: dict[str, float]):
    names = list(importances)[::-1]
    fig = F.new_figure(6.0, 1.0 + 0.4 * len(names))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="#2b5d9b")
    ax.set_xlabel("importance (fANOVA, share of the value's variance)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _axis_values(dim, trials) -> list[float | None]:
    """A parameter on [0, 1]: ranges by position (log ranges in log), choices by index."""
    out = []
    for t in trials:
        v = t.params.get(dim.name)
        if v is None and dim.name not in t.params:
            out.append(None)
        elif dim.choices is not None:
            choices = [json.dumps(c) for c in dim.choices] if dim.encoded else list(dim.choices)
            out.append(choices.index(v) / max(1, len(choices) - 1) if v in choices else None)
        elif dim.log:
            out.append((math.log(v) - math.log(dim.low)) / (math.log(dim.high) - math.log(dim.low)))
        else:
            out.append((v - dim.low) / (dim.high - dim.low))
    return out


def parallel_figure(space, trials):
    """One line per complete trial through its (scaled) parameters and value; colour = value (red = best)."""
    done = [t for t in trials if t.state.name == "COMPLETE" and _finite(t.value)]
    dims = space.dims
    fig = F.new_figure(1.6 + 1.3 * (len(dims) + 1), 3.8)
    ax = fig.add_subplot()
    values = np.array([t.value for t in done])
    lo, hi = values.min(), values.max()
    scaled = (values - lo) / (hi - lo) if hi > lo else np.ones_like(values)
    if space.direction == "minimize":
        scaled = 1 - scaled
    cmap = matplotlib.colormaps["coolwarm"]
    cols = [_axis_values(d, done) for d in dims]
    order = np.argsort(scaled)  # the best drawn last, on top
    for i in order:
        ys = [c[i] for c in cols] + [float(scaled[i]) if space.direction == "maximize" else 1 - float(scaled[i])]
        ax.plot(range(len(ys)), [np.nan if y is None else y for y in ys], color=cmap(float(scaled[i])), lw=1.4,
                alpha=0.85)
    labels = []
    for d in dims:
        if d.choices is not None:
            labels.append(f"{d.name}\n" + " | ".join(str(c) for c in d.choices)[:40])
        else:
            labels.append(f"{d.name}\n{d.low:g} – {d.high:g}{' (log)' if d.log else ''}")
    labels.append(f"val {space.metric}\n{lo:.3f} – {hi:.3f}")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["low", "high"], fontsize=7)
    for x in range(len(labels)):
        ax.axvline(x, color="#555", lw=0.6)
    return fig


def importances(study, complete: int) -> tuple[dict[str, float] | None, str | None]:
    """fANOVA importances, or why there are none."""
    if complete < MIN_FOR_IMPORTANCE:
        return None, (f"Parameter importances need at least {MIN_FOR_IMPORTANCE} complete trials; this tune has "
                      f"{complete}. Run more trials (pruned ones do not count).")
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study)), None
    except (RuntimeError, ValueError) as e:  # e.g. every complete trial has the same value of a parameter
        return None, f"Parameter importances could not be computed: {' '.join(str(e).split())[:300]}"


def _cell(v) -> str:
    return escape(fmt(v, 4) if isinstance(v, float) else ("n/a" if v is None else v))


def write_tune_report(space, study, path: str | Path) -> Path:
    """Write the report of ``study`` (an Optuna study of ``space``) to ``path``."""
    trials = study.get_trials(deepcopy=False)
    maximize = space.direction == "maximize"
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    parts: list[tuple[str, str, str]] = []
    meta = (f'<p class="meta">{len(trials)} trials ({", ".join(f"{n} {s}" for s, n in sorted(states.items()))}); '
            f'objective: validation {escape(space.metric)} ({escape(space.direction)}); pruner '
            f'{escape(space.pruner)}; sampler TPE</p>')
    if complete:
        best = study.best_trial
        rows = [[escape(k), _cell(v)] for k, v in best.params.items()]
        body = (f"<p>Trial {best.number}: val {escape(space.metric)} <b>{_cell(best.value)}</b> in "
                f"<code>{escape(best.user_attrs.get('run_dir', ''))}</code>; its full config is "
                f"<code>best.yaml</code>.</p>" + table(["setting", "value"], rows, css_class="kv"))
        parts.append(("best", "Best trial", body))
        parts.append(("history", "Optimisation history",
                      png_img(history_figure(trials, space.metric, maximize), "history",
                              f"val {space.metric} per trial; the line is the best so far")
                      + png_img(curves_figure(trials, space.metric), "curves",
                                f"val {space.metric} per epoch (dashed: pruned)")))
        imp, why = importances(study, len(complete))
        parts.append(("importance", "Parameter importances",
                      note(why) if imp is None else png_img(importance_figure(imp), "importance",
                                                            "fANOVA importance of each searched setting")))
        parts.append(("parallel", "Parallel coordinates",
                      png_img(parallel_figure(space, trials), "parallel",
                              "complete trials through their settings (scaled to each range) and value; red = best")))
    else:
        parts.append(("best", "Best trial", note("No trial has completed yet.")))
    header = ["trial", "state", f"val {space.metric}", *[d.name for d in space.dims], "epochs", "seconds", "note"]
    rows = []
    for t in trials:
        ua = t.user_attrs
        rows.append([str(t.number), escape(t.state.name.lower()), _cell(t.value),
                     *[_cell(t.params.get(d.name)) for d in space.dims], _cell(ua.get("epochs")),
                     _cell(ua.get("seconds")), escape(ua.get("error", ""))])
    parts.append(("trials", "Trials", table(header, rows)))
    body = meta + nav([(i, h) for i, h, _ in parts]) + "".join(section(i, h, b) for i, h, b in parts)
    path = Path(path)
    write_text(path, page(f"Tune report: {space.name}", body))
    return path
