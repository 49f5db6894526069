"""The study report's CheXtransfer section as blocks: parameters vs test AUC, the pretraining boost, truncation's
parameter efficiency and Spearman's rho over architectures (numbers from :mod:`medbench.study.chextransfer`)."""
from __future__ import annotations

from medbench.study.figures import boost_figure, params_figure, truncation_figure
from medbench.study.tables import Block, Table, ci_text, num, p_text, params_text, signed


def chextransfer_section(chex: dict) -> tuple[str, str, list[Block]]:
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
    blocks = [Block("h3", "Pretraining boost (pretrained − scratch)")]
    if not boost:
        return blocks + [Block("p", "No arm has both a pretrained and a scratch run that finished.")]
    rows = [[b["group"], b["section"], str(b["model"]), params_text(b["params"]), num(b["auc_pretrained"]),
             num(b["auc_scratch"]), signed(b["boost"]), ci_text(b["boost_ci"]), p_text(b["p"])] for b in boost]
    blocks.append(Block("table", table=Table("chex-boost", ["setting", "dataset", "model", "parameters",
                                                            "AUC pretrained", "AUC scratch", "boost", "95 % CI", "p"],
                                             rows, first_attr="setting", text_cols=(0, 1, 2))))
    fig = boost_figure(boost)
    if fig is not None:
        blocks.append(Block("figure", figure=fig, name="chex-boost",
                            text="Pretraining boost in mean test AUC vs parameters (log scale)"))
    return blocks


def _truncation_blocks(truncation: list[dict], points: list[dict]) -> list[Block]:
    blocks = [Block("h3", "Truncation: parameter efficiency")]
    if not truncation:
        return blocks + [Block("p", "No truncated arm has a finished full-model counterpart.")]
    rows = [[t["group"], t["section"], str(t["truncate"]), params_text(t["params_full"]),
             params_text(t["params_truncated"]), num(t["share_removed"]), num(t["auc_full"]), num(t["auc_truncated"]),
             signed(t["delta_auc"]), num(t["auc_retained"]), num(t["delta_auc_per_mparam"], 4),
             ci_text(t["delta_ci"]), p_text(t["p"])] for t in truncation]
    blocks.append(Block("table", table=Table(
        "chex-truncation", ["setting", "dataset", "stages cut", "params full", "params truncated", "share removed",
                            "AUC full", "AUC truncated", "ΔAUC", "AUC retained", "ΔAUC per M params removed",
                            "95 % CI of ΔAUC", "p"], rows, first_attr="setting", text_cols=(0, 1))))
    fig = truncation_figure(points)
    if fig is not None:
        blocks.append(Block("figure", figure=fig, name="chex-truncation",
                            text="Truncated and full models: parameters (log scale) vs mean test AUC, one "
                                 "line per architecture"))
    return blocks


def _spearman_blocks(spear: list[dict]) -> list[Block]:
    blocks = [Block("h3", "Spearman's ρ over architectures")]
    if not spear:
        return blocks + [Block("p", "No setting has two or more architectures.")]
    rows = [[s["setting"], s["section"], "ImageNet top-1" if s["x"] == "imagenet_top1" else "log10 parameters",
             str(s["n"]), num(s["rho"]), p_text(s["p"]), s["note"] or ""] for s in spear]
    blocks.append(Block("table", table=Table("chex-spearman", ["setting", "dataset", "x (vs test AUC)",
                                                               "architectures", "ρ", "p", "note"], rows,
                                             first_attr="setting", text_cols=(0, 1, 2, 6))))
    return blocks
