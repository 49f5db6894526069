"""The run report's cross-validation section (a ``--folds K`` run): per-fold metrics with mean ± sd, the pooled
out-of-fold record with its bootstrap CIs, and the fold ensemble's test record, from ``cv.json``."""
from __future__ import annotations

from pathlib import Path

from medbench.crossval import read_cv
from medbench.errors import MedbenchError
from medbench.report.html import escape, fmt, fmt_ci, note, table

Section = tuple[str, str, str]
SHOWN = ("auc", "acc", "balanced_acc", "sensitivity", "specificity", "f1_macro", "loss")


def mean_sd_text(mean, sd) -> str:
    """``0.912 ± 0.021`` (sample sd over the folds), the mean alone when sd is undefined."""
    return fmt(mean) if sd is None else f"{fmt(mean)} ± {fmt(sd)}"


def crossval_sections(run_dir: Path) -> list[Section]:
    """The CV section first in the report of a cross-validation's parent run; none for other runs."""
    try:
        cv = read_cv(run_dir)
    except MedbenchError as e:
        return [("crossval", "Cross-validation", note(str(e)))]
    if cv is None:
        return []
    k = cv["k"]
    keys = [m for m in SHOWN if any(m in (f.get("val") or {}) for f in cv["folds"])]
    rows = []
    for f in cv["folds"]:
        rows.append([escape(f"{f['fold']} ({f['run_dir']})"), str(f.get("n_train", "")), str(f.get("n_val", ""))]
                    + [f"{fmt(f['val'].get(m))} / {fmt((f.get('test') or {}).get(m))}" for m in keys])
    rows.append(["<b>mean ± sd</b>", "", ""]
                + [f"{mean_sd_text(cv['mean']['val'].get(m), cv['sd']['val'].get(m))} / "
                   f"{mean_sd_text(cv['mean']['test'].get(m), cv['sd']['test'].get(m))}" for m in keys])
    oof, ens = cv["oof"], cv["ensemble"]["test"]
    pooled = table(["record", "n"] + [escape(m) for m in keys],
                   [["out-of-fold (pooled val)", fmt(oof.get("n"))] + [fmt_ci(oof.get(m), oof.get(f"{m}_ci"))
                                                                      for m in keys],
                    [f"fold ensemble on test ({k} models averaged)", fmt(ens.get("n"))]
                    + [fmt_ci(ens.get(m), ens.get(f"{m}_ci")) for m in keys]], "cv-pooled")
    split = cv.get("split") or {}
    grouped = (f"grouped by <code>{escape(split['group_regex'])}</code> ({split.get('groups')} groups, none in two "
               f"folds)" if split.get("group_regex") else "one image per group")
    th = cv.get("threshold") or {}
    th_text = (f" Binary labels: each fold run decides with its own rule; the out-of-fold and ensemble labels use "
               f"threshold {fmt(th.get('headline'))} (Youden on the out-of-fold scores: {fmt(th.get('youden'))})."
               if th else "")
    body = (f"<p>This run is a {k}-fold cross-validation: train and val were pooled ({split.get('n')} images), "
            f"split into {k} stratified folds (seed {split.get('seed')}; {grouped}), and each fold trained one "
            f"ordinary run whose val split is that fold (<code>folds/NN</code>). The test split was never pooled. "
            f"Below, <b>val</b> in metrics.json and the summary is the pooled out-of-fold record, and <b>test</b> "
            f"is the fold ensemble.{th_text}</p>"
            + table(["fold", "n train", "n val"] + [f"{escape(m)} val / test" for m in keys], rows, "cv-folds")
            + "<p>Pooled records, 95 % bootstrap CIs:</p>" + pooled)
    return [("crossval", "Cross-validation", body)]
