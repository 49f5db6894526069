"""The run report's sections about the held-out test split: ROC and precision-recall curves, the confusion
matrix, calibration, per-class metrics, the most confident errors, and Grad-CAM of the saved model.

Decisions follow the run's rule (:func:`medbench.tasks.decide` at the threshold the run used). A section is
``(id, heading, body HTML)``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from medbench.report import figures as F
from medbench.report.analysis import Findings, cam_indices, decision_threshold, findings
from medbench.report.html import escape, fmt_ci, note, png_img, table
from medbench.report.inputs import RunInputs, model_scores
from medbench.tasks import decide

Section = tuple[str, str, str]
PER_CLASS_METRICS = ("precision", "recall", "f1", "support", "auc")


def heldout_sections(inputs: RunInputs) -> list[Section]:
    """Curves, confusion, calibration, per-class metrics and errors; one note when there are no test scores."""
    if inputs.scores is None:
        return [("roc", "ROC and precision–recall curves (test)", note(inputs.scores_note or "no test scores"))]
    found = findings(inputs.metrics, inputs.y_test, inputs.scores, inputs.task, inputs.names)
    return [_curves(inputs), _confusion(inputs, found), _calibration(inputs, found), _per_class(inputs, found),
            _errors(inputs, found)]


def _curves(inputs: RunInputs) -> Section:
    task, n = inputs.task.name, len(inputs.test)
    y, s, names = inputs.y_test, inputs.scores, inputs.names
    kind = "per label" if task == "multilabel" else ("positive class" if task == "binary" else "per class, one-vs-rest")
    roc = png_img(F.roc_figure(y, s, task, names), "roc", f"ROC on test (n={n}), {kind}")
    pr = png_img(F.pr_figure(y, s, task, names), "pr", f"Precision–recall on test (n={n}), {kind}")
    return ("roc", "ROC and precision–recall curves (test)",
            (note(inputs.scores_note) if inputs.scores_note else "") + roc + pr)


def _confusion(inputs: RunInputs, found: Findings) -> Section:
    cm, names = found.confusion, inputs.names
    what = (" (one 2×2 matrix per label: rows true 0/1, columns predicted 0/1)" if inputs.task.name == "multilabel"
            else "")
    # data-matrix: the counts drawn, for tools and tests
    body = (f'<p data-matrix="{escape(json.dumps(cm.tolist()))}">Rows: true class; columns: predicted '
            f"class{escape(what)}. Source: {escape(found.confusion_source)}.</p>"
            + png_img(F.confusion_figure(cm, names, normalize=False), "confusion", "Confusion matrix, counts")
            + png_img(F.confusion_figure(cm, names, normalize=True), "confusion-normalized",
                      "Confusion matrix, row-normalised (recall per class on the diagonal)"))
    return ("confusion", "Confusion matrix (test)", body)


def _calibration(inputs: RunInputs, found: Findings) -> Section:
    fig = F.reliability_figure(inputs.y_test, inputs.scores, inputs.task.name, threshold=found.threshold)
    return ("calibration", "Calibration (test)",
            png_img(fig, "reliability", "Reliability diagram: observed accuracy per confidence bin"))


def _rule(task: str, threshold: float) -> str:
    if task == "multilabel":
        return f"at {threshold:g} per label"
    if task == "binary":
        return f"positive when p > {threshold:.4g}" + (" (MedMNIST rule)" if threshold == 0.5 else "")
    return "by the argmax"


def _per_class(inputs: RunInputs, found: Findings) -> Section:
    rows = []
    for name, rec in found.per_class.items():
        rec = rec if isinstance(rec, dict) else {}
        rows.append([escape(name)] + [f'<td data-class="{escape(name)}" data-metric="{m}">'
                                      f'{escape(fmt_ci(rec.get(m), rec.get(f"{m}_ci")))}</td>'
                                      for m in PER_CLASS_METRICS])
    head = "label" if inputs.task.name == "multilabel" else "class"
    return ("per-class", "Per-class metrics (test)",
            f"<p>Source: {escape(found.per_class_source)}. AUC one-vs-rest; predictions "
            f"{escape(_rule(inputs.task.name, found.threshold))}.</p>"
            + table([head, "precision", "recall", "F1", "support", "AUC"], rows, "per-class"))


def _errors(inputs: RunInputs, found: Findings) -> Section:
    errors, names = found.errors, inputs.names
    if not errors:
        return ("errors", "Most confident errors (test)", "<p>No errors on the test split.</p>")
    imgs = [inputs.test.images[i].cpu().numpy() for i, *_ in errors]
    multilabel = inputs.task.name == "multilabel"
    items = inputs.items
    if multilabel:
        titles = [f"{item_label(items, i)} {short(names, lab)}\ntrue {1 - pr} · pred {pr}\np={p:.3f}"
                  for i, lab, pr, p in errors]
    else:
        titles = [f"{item_label(items, i)} true: {short(names, t)}\npred: {short(names, pr)}\np={p:.3f}"
                  for i, t, pr, p in errors]
    fig = F.image_grid_figure(imgs, titles, cols=4, panel=1.9)
    wrong = "decision" if multilabel else "class"
    caption = f"The {len(errors)} most confident errors on test (probability of the wrong {wrong})"
    # the full names, in the order of the panels: what an auditor looks up
    listed = table(["#", "image", "p"], [[str(k + 1), f'<td data-item="{escape(items[i])}">{escape(items[i])}</td>',
                                          f"{p:.3f}"] for k, (i, *_, p) in enumerate(errors)], "error-items")
    return ("errors", "Most confident errors (test)", png_img(fig, "errors", caption) + listed)


def item_label(items: Sequence[str], i: int, limit: int = 18) -> str:
    """How a panel names test image ``i``: ``#index`` for MedMNIST, else its file name (the end of its path)."""
    item = items[i] if 0 <= i < len(items) else str(i)
    if item.isdigit():
        return f"#{item}"
    name = item.rsplit("/", 1)[-1]
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


# ---- Grad-CAM ----

def gradcam_section(inputs: RunInputs) -> Section:
    if inputs.model is None:
        body = note(f"Grad-CAM skipped: {inputs.model_error}")
    else:
        try:
            body = _gradcam(inputs)
        except Exception as e:  # noqa: BLE001 - an explanation must not cost the report (a model with no conv)
            body = note(f"Grad-CAM failed for model '{inputs.cfg.model}': {type(e).__name__}: {e}")
    return ("gradcam", "Grad-CAM (test)", body)


def _gradcam(inputs: RunInputs) -> str:
    from medbench.explain import gradcam, overlay

    task, names, y = inputs.task, inputs.names, inputs.y_test
    idx = cam_indices(y, task.name)
    images = inputs.test.images[idx].cpu()
    scores = model_scores(inputs.model, task, inputs.prep, images)
    pred = decide(scores, task.name, decision_threshold(inputs.metrics, task.name))
    if task.name == "multilabel":
        targets = scores.argmax(1)
        titles = [f"{item_label(inputs.items, i)} CAM: {short(names, t)}\ntrue: {_label_set(y[i], names)}\npred: "
                  f"{_label_set(pred[j], names)}" for j, (i, t) in enumerate(zip(idx, targets))]
    else:
        targets = pred
        titles = [f"{item_label(inputs.items, i)} true: {short(names, int(y[i, 0]))}\npred: "
                  f"{short(names, int(pred[j]))} ({scores[j, pred[j]]:.2f})" for j, i in enumerate(idx)]
    output_fn = None
    if task.num_outputs != task.num_classes:  # e.g. CORN: outputs are thresholds; explain log P(class)
        output_fn = lambda logits: task.scores(logits).clamp_min(1e-12).log()  # noqa: E731
    cams = gradcam(inputs.model, inputs.prep(images), [int(t) for t in targets], output_fn=output_fn)
    panels = [images[j].numpy() for j in range(len(idx))] + [overlay(images[j], cams[j]) for j in range(len(idx))]
    fig = F.image_grid_figure(panels, titles + ["Grad-CAM"] * len(idx), cols=len(idx), panel=1.45)
    what = "the highest-scoring label" if task.name == "multilabel" else "the predicted class"
    return (f"<p>Top row: test images; bottom row: Grad-CAM of {what} at the last convolution with a spatial "
            "output (red: regions that raise its score).</p>"
            + png_img(fig, "gradcam", f"Grad-CAM on {len(idx)} test images"))


def short(names: Sequence[str], i: int, limit: int = 16) -> str:
    """Class ``i``'s name, cut to ``limit`` characters."""
    n = str(names[i]) if 0 <= i < len(names) else str(i)
    return n if len(n) <= limit else n[: limit - 1] + "…"


def _label_set(row, names: Sequence[str]) -> str:
    on = [short(names, i, 10) for i in np.flatnonzero(np.asarray(row) == 1)]
    return ", ".join(on[:2]) + ("…" if len(on) > 2 else "") if on else "none"
