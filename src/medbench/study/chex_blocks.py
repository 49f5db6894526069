"""The study report's CheXtransfer section as blocks: parameters vs test AUC, the pretraining boost, truncation's
parameter efficiency and Spearman's rho over architectures (numbers from :mod:`medbench.study.chextransfer`)."""
from __future__ import annotations

from medbench.study.figures import boost_figure, params_figure, truncation_figure
from medbench.study.tables import Block, Table, ci_text, num, p_text, params_text, signed


def chextransfer_section(chex: dict) -> tuple[str, str, list[Block]] | None:
    """The section, or None when the study has one architecture (nothing to compare)."""
    if not chex.get("applicable"):
        return None
    return "chextransfer", "CheXtransfer analyses", chex_blocks(chex)


def chex_blocks(chex: dict) -> list[Block]:
    if not chex.get("applicable"):
        return [Block("note", chex.get("note", "not applicable"))]
    blocks = [Block("p", f"Architectures: {', '.join(chex['architectures'])}. Parameters are counted on the model "
                         "as each run builds it (input channels, classes, truncation).")]
    blocks += _params_blocks(chex["points"])
    if chex["has_pretrained_axis"]:
        blocks += _boost_blocks(chex["boost"])
    if chex["has_truncate_axis"]:
        blocks += _truncation_blocks(chex["truncation"], chex["points"])
    blocks += _spearman_blocks(chex["spearman"])
    missing = sorted({p["model"] for p in chex["points"] if p["imagenet_top1"] is None})
    if missing:
        blocks.append(Block("note", f"ImageNet top-1 n/a (left out of ρ) for: {', '.join(map(str, missing))}."))
    return blocks


def _params_blocks(points: list[dict]) -> list[Block]:
    if not points:  # no arm finished
        return []
    rows = [[p["arm"], p["section"], str(p["model"]), num(p["pretrained"]), str(p["truncate"]),
             params_text(p["params"]), num(p["auc"]), num(p["imagenet_top1"], 2)] for p in points]
    blocks = [Block("h3", "Parameters vs test AUC"),
              Block("table", table=Table("chex-params", ["arm", "dataset", "model", "pretrained", "truncate",
                                                         "parameters", "mean test AUC", "ImageNet top-1 %"], rows,
                                         text_cols=(0, 1, 2)))]
    fig = params_figure(points)
    if fig is not None:
        blocks.append(Block("figure", figure=fig, name="chex-params",
                            text="Parameters (log scale) vs mean test AUC per arm: circles trained from scratch, "
                                 "triangles ImageNet-pretrained"))
    return blocks


def _boost_blocks(boost: list[dict]) -> list[Block]:
    if not boost:  # no arm has both a pretrained and a scratch run that finished
        return []
    blocks = [Block("h3", "Pretraining boost (pretrained − scratch)")]
    rows = [[b["group"], b["section"], str(b["model"]), params_text(b["params"]), num(b["auc_pretrained"]),
             num(b["auc_scratch"]), signed(b["boost"]), *_ci_p(b, "boost_ci")] for b in boost]
    blocks.append(Block("table", table=Table("chex-boost", ["setting", "dataset", "model", "parameters",
                                                            "AUC pretrained", "AUC scratch", "boost", "95 % CI", "p",
                                                            "what the CI and p cover"],
                                             rows, first_attr="setting", text_cols=(0, 1, 2, 9))))
    fig = boost_figure(boost)
    if fig is not None:
        blocks.append(Block("figure", figure=fig, name="chex-boost",
                            text="Pretraining boost in mean test AUC vs parameters (log scale)"))
    return blocks


def _truncation_blocks(truncation: list[dict], points: list[dict]) -> list[Block]:
    if not truncation:  # no truncated arm has a finished full-model counterpart
        return []
    blocks = [Block("h3", "Truncation: parameter efficiency")]
    rows = [[t["group"], t["section"], str(t["truncate"]), params_text(t["params_full"]),
             params_text(t["params_truncated"]), num(t["share_removed"]), num(t["auc_full"]), num(t["auc_truncated"]),
             signed(t["delta_auc"]), num(t["auc_retained"]), num(t["delta_auc_per_mparam"], 4),
             *_ci_p(t, "delta_ci")] for t in truncation]
    blocks.append(Block("table", table=Table(
        "chex-truncation", ["setting", "dataset", "stages cut", "params full", "params truncated", "share removed",
                            "AUC full", "AUC truncated", "ΔAUC", "AUC retained", "ΔAUC per M params removed",
                            "95 % CI of ΔAUC", "p", "what the CI and p cover"], rows, first_attr="setting",
        text_cols=(0, 1, 13))))
    fig = truncation_figure(points)
    if fig is not None:
        blocks.append(Block("figure", figure=fig, name="chex-truncation",
                            text="Truncated and full models: parameters (log scale) vs mean test AUC, one "
                                 "line per architecture"))
    return blocks


def _spearman_blocks(spear: list[dict]) -> list[Block]:
    if not spear:  # no setting has two or more architectures
        return []
    blocks = [Block("h3", "Spearman's ρ over architectures")]
    rows = [[s["setting"], s["section"], "ImageNet top-1" if s["x"] == "imagenet_top1" else "log10 parameters",
             str(s["n"]), num(s["rho"]), p_text(s["p"]), s["note"] or ""] for s in spear]
    blocks.append(Block("table", table=Table("chex-spearman", ["setting", "dataset", "x (vs test AUC)",
                                                               "architectures", "ρ", "p", "note"], rows,
                                             first_attr="setting", text_cols=(0, 1, 2, 6))))
    return blocks


def _ci_p(row: dict, ci_key: str) -> list[str]:
    """The CI, p and what they cover; the seed limitation instead when an arm has too few seeds."""
    if row.get("too_few"):
        return ["—", "—", row["too_few"]]
    return [ci_text(row[ci_key]), p_text(row["p"]), row.get("caveat") or ""]
