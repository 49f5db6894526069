"""The study report's sections as blocks, built from its summary: the leaderboard, train vs test, the published
MedMNIST v2 comparison and the significance tests. Each section is ``(id, heading, blocks)``, or None when it has
nothing to show (no empty headings or tables)."""
from __future__ import annotations

import numpy as np

from medbench.metrics.comparison import MIN_SEEDS
from medbench.study import published as P
from medbench.study.figures import forest_figure
from medbench.study.grouping import value_text
from medbench.study.tables import Block, Table, ci_text, mean_pm, num, p_text, signed, slug

Section = tuple[str, str, list[Block]]  # (id, heading, blocks)


def leaderboard(summary: dict) -> Section:
    level, replicates, seed = summary["level"], summary["replicates"], summary["seed"]
    blocks = [Block("p", f"Arms group runs by every setting except seed. Mean ± standard deviation over the seeds "
                         f"that finished (ddof = 1); the {int(level * 100)} % CI is a bootstrap of that mean over "
                         f"{replicates} resamples of the test set (seed {seed}), one resample matrix per dataset "
                         f"shared by every run on it. It reflects test-set sampling, not training variability "
                         f"across other seeds. Best arm (highest mean test AUC) in bold.")]
    for sec in summary["sections"]:
        blocks += _leaderboard_blocks(sec, level)
    if summary["not_done"]:
        rows = [[r["id"], r["status"], r["dataset"], r["arm"], value_text(r["seed"]), (r["error"] or "")[:300]]
                for r in summary["not_done"]]
        blocks += [Block("h3", "Runs not done"),
                   Block("table", table=Table("not-done", ["run", "status", "dataset", "arm", "seed", "error"],
                                              rows, first_attr="run", text_cols=(0, 1, 2, 3, 5)))]
    return "leaderboard", "Leaderboard", blocks


def _leaderboard_blocks(sec: dict, level: float) -> list[Block]:
    blocks = [Block("h3", f"{sec['title']}"
                    + (f" — test n = {sec['n_test']}, {sec['task']}" if sec.get("n_test") else ""))]
    if sec.get("note"):
        blocks.append(Block("note", sec["note"]))
    rows, strong = [], []
    for a in sec["arms"]:
        rows.append([a["arm"], f"{a['n_seeds']}/{a['n_runs']}", mean_pm(a["test_auc"]),
                     ci_text(a["test_auc"].get("ci")), mean_pm(a["test_acc"]), ci_text(a["test_acc"].get("ci")),
                     mean_pm(a["val_auc"]), str(a["rank"]) if a["rank"] else "—"])
        strong.append(bool(a["best"]))
    blocks.append(Block("table", table=Table(f"leaderboard-{slug(sec['title'])}",
                                             ["arm", "seeds done/runs", "test AUC mean ± std",
                                              f"AUC {int(level * 100)} % CI", "test ACC mean ± std",
                                              f"ACC {int(level * 100)} % CI", "val AUC", "rank"], rows, strong)))
    notes = [n for a in sec["arms"] for n in a.get("ci_notes", [])]
    if notes:
        blocks.append(Block("note", "Left out of the CIs (no usable test predictions): " + "; ".join(notes)))
    fig = forest_figure(sec)
    if fig is not None:
        blocks.append(Block("figure", figure=fig, name=f"leaderboard-{slug(sec['title'])}",
                            text=f"{sec['title']}: mean test AUC per arm with its {int(level * 100)} % bootstrap CI "
                                 f"(bars) and each seed's test AUC (dots)"))
    return blocks


def train_vs_test(summary: dict) -> Section | None:
    blocks = [b for sec in summary["sections"] for b in _gap_blocks(sec)]
    if not blocks:
        return None
    return "gap", "Train vs test", [Block("p", "Means over seeds; gap = train − test (positive: better on the "
                                               "training images).")] + blocks


def _gap_blocks(sec: dict) -> list[Block]:
    arms = [a for a in sec["arms"] if a["n_seeds"]]
    rows = []
    for a in arms:
        rows.append([a["arm"], str(a["n_seeds"]), num(a["train_auc"]["mean"]), num(a["test_auc"]["mean"]),
                     signed(a["gap_auc"]["mean"]), num(a["train_acc"]["mean"]), num(a["test_acc"]["mean"]),
                     signed(a["gap_acc"]["mean"])])
    if not rows:
        return []
    return [Block("h3", sec["title"]),
            Block("table", table=Table(f"gap-{slug(sec['title'])}",
                                       ["arm", "seeds", "train AUC", "test AUC", "AUC gap", "train ACC", "test ACC",
                                        "ACC gap"], rows, [a["best"] for a in arms]))]


def published(summary: dict) -> Section | None:
    src = P.MEDMNIST_V2_SOURCE
    blocks = [Block("p", f"Published: {src['citation']} doi:{src['doi']}; values as tabulated on {src['url']} "
                         f"(repository {src['repository']}, {src['path']} at commit {src['commit'][:12]}); "
                         f"{src['note']}. Ours: the arm with the highest mean validation AUC (chosen without "
                         f"looking at test), with its test mean ± std over seeds and bootstrap CI.")]
    any_pub = False
    for sec in summary["sections"]:
        b = _published_blocks(sec)
        any_pub = any_pub or bool(b)
        blocks += b
    if not any_pub:  # none of the study's datasets is in the published MedMNIST v2 2D table
        return None
    disc = "; ".join(f"{d['dataset']} {d['method']} {d['metric']}: site {d['site']}, quoted {d['quoted']}"
                     for d in P.MEDMNIST_V2_DISCREPANCIES)
    blocks.append(Block("note", f"Third-party quotes of the journal's Table 3 differ from the site in: {disc}. "
                                "The site's values are shown."))
    return "published", "Published MedMNIST v2 comparison", blocks


def _published_blocks(sec: dict) -> list[Block]:
    pub = sec.get("published")
    if not pub:
        return []
    blocks = [Block("h3", sec["title"])]
    if pub.get("size") not in (None, 28):
        blocks.append(Block("note", f"This study ran at {pub['size']} px; the published numbers are on the 28 px "
                                    "images (the (224) rows resize those up)."))
    best = pub["best"]
    rows, strong = [], []
    ours = pub.get("ours")
    if ours:
        seeds = f"{ours['n_seeds']} seed{'s' if ours['n_seeds'] != 1 else ''}"
        rows.append([f"ours: {ours['arm']} (best by val AUC {num(ours['val_auc'])}, {seeds})",
                     f"{mean_pm(ours['test_auc'])} [{ci_text(ours['test_auc'].get('ci'))}]",
                     f"{mean_pm(ours['test_acc'])} [{ci_text(ours['test_acc'].get('ci'))}]",
                     f"AUC rank {ours.get('auc_rank', 'n/a')} of 8, ACC rank {ours.get('acc_rank') or 'n/a'} of 8"])
        strong.append(False)
    bold = set()
    for r in pub["rows"]:
        for j, m in ((1, "auc"), (2, "acc")):
            if r[m] == best[m]["value"]:
                bold.add((len(rows), j))
        rows.append([r["method"], num(r["auc"]), num(r["acc"]), "MedMNIST v2 (published)"])
        strong.append(False)
    blocks.append(Block("table", table=Table(f"published-{slug(sec['title'])}",
                                             ["method", "test AUC", "test ACC", "source / rank"], rows, strong,
                                             first_attr="method", bold=bold, text_cols=(0, 3))))
    blocks.append(Block("p", f"Best published: AUC {num(best['auc']['value'])} ({', '.join(best['auc']['methods'])}), "
                             f"ACC {num(best['acc']['value'])} ({', '.join(best['acc']['methods'])}); in bold."))
    return blocks


def significance(summary: dict) -> Section | None:
    blocks = [b for sec in summary["sections"] for b in _significance_blocks(sec)]
    blocks += _cross_blocks(summary["cross_dataset"])
    if not blocks:
        return None
    intro = Block("p", f"Within each dataset: the best arm (highest mean test AUC) against every other arm, by a "
                       f"two-level bootstrap of {summary['replicates']} replicates. Each replicate resamples the "
                       "seeds of each arm with replacement (their spread rescaled to the usual standard error "
                       "s/√n) and the test images (one resample shared by every run on the dataset: the arms score "
                       "the same images), and takes the difference of the arms' mean-over-seeds AUC; the CI is its "
                       "percentile interval and p is two-sided, min(1, 2·min(P(d ≤ 0), P(d ≥ 0))). So the CI and p "
                       f"include seed-to-seed variation, not only test-set sampling. With fewer than {MIN_SEEDS} "
                       "seeds in an arm the seed noise cannot be told from the effect: no CI or p is given. With "
                       "few seeds the interval is approximate (a t interval over seed means would be wider), and "
                       "the best arm is picked on test AUC, which favours it.")
    return "significance", "Significance", [intro] + blocks


def _significance_blocks(sec: dict) -> list[Block]:
    comps = [s for s in sec["significance"] if s["n_seeds_arm"]]
    if not comps:
        return []
    rows = [[s["arm"], f"{s['n_seeds_best']} vs {s['n_seeds_arm']}", signed(s["diff"]),
             "—" if s.get("too_few") else ci_text(s["ci"]), "—" if s.get("too_few") else p_text(s["p"]),
             s.get("too_few") or s.get("caveat") or ""] for s in comps]
    blocks = [Block("h3", sec["title"]),
              Block("p", f"Best arm (highest mean test AUC): {sec['best_arm']}. Difference = best − arm."),
              Block("table", table=Table(f"significance-{slug(sec['title'])}",
                                         ["arm", "seeds (best vs arm)", "AUC difference", "95 % CI (seeds + images)",
                                          "p", "what the CI and p cover"], rows, text_cols=(0, 5)))]
    skipped = len(sec["significance"]) - len(comps)
    if skipped:
        blocks.append(Block("p", f"{skipped} arm{'s' if skipped != 1 else ''} without a finished run not compared "
                                 f"(see Runs not done)."))
    return blocks


def _cross_blocks(cross: dict) -> list[Block]:
    table = cross["table"]
    datasets = cross["datasets"]
    if len(datasets) < 2 or not table:  # one dataset (or no finished arm): no across-dataset test
        return []
    blocks = [Block("h3", "Mean test AUC per dataset")]
    order = sorted(table, key=lambda k: -float(np.mean(list(table[k].values()))))
    rows = [[name] + [num(table[name].get(d)) for d in datasets] for name in order]
    blocks.append(Block("table", table=Table("cross-dataset-auc", ["arm"] + datasets, rows)))
    if not cross["wilcoxon"]:  # no pair of arms ran on two or more datasets
        return blocks
    blocks.append(Block("h3", "Wilcoxon signed-rank tests across datasets"))
    small = sorted({w["n"] for w in cross["wilcoxon"] if not w["can_reach_005"]})
    if small:
        blocks.append(Block("note", f"Too few datasets for significance: with n ≤ 5 datasets the exact two-sided "
                                    f"Wilcoxon p cannot go below 2/2^n (n = 5: 0.0625). Pairs here with n = "
                                    f"{', '.join(map(str, small))} cannot reach p < 0.05 whatever their AUCs; read "
                                    f"them as win counts only."))
    rows = [[f"{w['a']} vs {w['b']}", str(w["n"]), f"{w['a_wins']}–{w['b_wins']}", signed(w["median_diff"]),
             num(w["statistic"], 1) if w["statistic"] is not None else "n/a", p_text(w["p"]), num(w["min_p"], 4),
             w["note"] or ""] for w in cross["wilcoxon"]]
    blocks.append(Block("table", table=Table("wilcoxon", ["pair (A vs B)", "datasets", "A wins–B wins",
                                                          "median AUC diff (A − B)", "W", "p", "smallest possible p",
                                                          "note"], rows, first_attr="pair", text_cols=(0, 7))))
    return blocks
