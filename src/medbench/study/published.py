"""Published reference numbers the study report sets our results against.

1. The MedMNIST v2 benchmark (test AUC and ACC of seven methods on the twelve 2D datasets), from

   Yang J, Shi R, Wei D, Liu Z, Zhao L, Ke B, Pfister H, Ni B. "MedMNIST v2 - A large-scale lightweight benchmark
   for 2D and 3D biomedical image classification". Scientific Data 10, 41 (2023),
   doi:10.1038/s41597-022-01721-8 (arXiv:2110.14795), as tabulated on the authors' project site
   (https://medmnist.com/v2, https://medmnist.github.io/v2): repository MedMNIST/medmnist.github.io, file v2.html,
   commit 6f5bc1a518a647459062dc4338f3edc0cff68b89, tables "Benchmarking Performance on MedMNIST2D".

   Every value below was copied from that file. The paper reports each method as the mean of at least three
   trials; "(28)" / "(224)" is the input resolution of the ResNets (224: the 28 px images resized up).
   Third-party repositories that quote the journal's Table 3 agree with the site in every cell they quote except
   three cells of the ResNet-18 (224) row (listed in ``MEDMNIST_V2_DISCREPANCIES``): they are shown as notes and
   the site's values are kept, so every number here comes from one source.

2. ImageNet-1k top-1 accuracy of the timm-built architectures (timm's packages carry no accuracy metadata), from
   timm's own evaluation table: repository huggingface/pytorch-image-models, file results/results-imagenet.csv,
   commit 0173a139a2c66db3a41ebfe1d8ac4fb02483642e, column ``top1`` (evaluated at the ``img_size`` stated
   there). Keys are ``<timm model>.<pretrained tag>``, the tag being the one timm loads by default (what
   medbench's ``--pretrained`` uses). Architectures whose default tag is not in that file are left out (the
   report shows "n/a"). torchvision-built models take their accuracy from torchvision's own weights metadata
   (``Weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]``), see ``medbench.study.report.imagenet_top1``.
"""
from __future__ import annotations

MEDMNIST_V2_SOURCE = {
    "citation": "Yang J, Shi R, Wei D, Liu Z, Zhao L, Ke B, Pfister H, Ni B. MedMNIST v2 - A large-scale lightweight "
                "benchmark for 2D and 3D biomedical image classification. Scientific Data 10, 41 (2023).",
    "doi": "10.1038/s41597-022-01721-8",
    "url": "https://medmnist.com/v2",
    "repository": "MedMNIST/medmnist.github.io",
    "path": "v2.html",
    "commit": "6f5bc1a518a647459062dc4338f3edc0cff68b89",
    "note": "test-set AUC and ACC, mean of at least three trials per method; ResNet (224) = 28 px images resized "
            "to 224 px",
}

MEDMNIST_V2_METHODS = ("ResNet-18 (28)", "ResNet-18 (224)", "ResNet-50 (28)", "ResNet-50 (224)", "auto-sklearn",
                       "AutoKeras", "Google AutoML Vision")

# dataset -> (AUC, ACC) per method, in MEDMNIST_V2_METHODS order
_TABLE = {
    "pathmnist": [(0.983, 0.907), (0.990, 0.905), (0.990, 0.911), (0.989, 0.892), (0.934, 0.716), (0.959, 0.834),
                  (0.944, 0.728)],
    "chestmnist": [(0.768, 0.947), (0.772, 0.947), (0.769, 0.947), (0.773, 0.948), (0.649, 0.779), (0.742, 0.937),
                   (0.778, 0.948)],
    "dermamnist": [(0.917, 0.735), (0.920, 0.754), (0.913, 0.735), (0.912, 0.731), (0.902, 0.719), (0.915, 0.749),
                   (0.914, 0.768)],
    "octmnist": [(0.943, 0.743), (0.957, 0.757), (0.952, 0.762), (0.958, 0.776), (0.887, 0.601), (0.955, 0.763),
                 (0.963, 0.771)],
    "pneumoniamnist": [(0.944, 0.854), (0.956, 0.863), (0.948, 0.854), (0.962, 0.884), (0.942, 0.855),
                       (0.947, 0.878), (0.991, 0.946)],
    "retinamnist": [(0.717, 0.524), (0.710, 0.493), (0.726, 0.528), (0.716, 0.511), (0.690, 0.515), (0.719, 0.503),
                    (0.750, 0.531)],
    "breastmnist": [(0.901, 0.863), (0.891, 0.833), (0.857, 0.812), (0.866, 0.842), (0.836, 0.803), (0.871, 0.831),
                    (0.919, 0.861)],
    "bloodmnist": [(0.998, 0.958), (0.998, 0.964), (0.997, 0.956), (0.998, 0.954), (0.984, 0.877), (0.998, 0.961),
                   (0.998, 0.966)],
    "tissuemnist": [(0.930, 0.676), (0.934, 0.682), (0.931, 0.680), (0.932, 0.680), (0.828, 0.532), (0.941, 0.703),
                    (0.924, 0.673)],
    "organamnist": [(0.997, 0.934), (0.998, 0.950), (0.997, 0.935), (0.998, 0.952), (0.963, 0.762), (0.994, 0.905),
                    (0.990, 0.886)],
    "organcmnist": [(0.992, 0.900), (0.994, 0.917), (0.992, 0.905), (0.993, 0.911), (0.976, 0.829), (0.990, 0.879),
                    (0.988, 0.877)],
    "organsmnist": [(0.972, 0.782), (0.974, 0.778), (0.972, 0.770), (0.975, 0.785), (0.945, 0.672), (0.974, 0.813),
                    (0.964, 0.749)],
}

MEDMNIST_V2: dict[str, dict[str, dict[str, float]]] = {
    dataset: {method: {"auc": auc, "acc": acc} for method, (auc, acc) in zip(MEDMNIST_V2_METHODS, rows)}
    for dataset, rows in _TABLE.items()
}

# Cells where third-party repositories quoting the journal's Table 3 differ from the site (kept as notes only).
MEDMNIST_V2_DISCREPANCIES = [
    {"dataset": "pneumoniamnist", "method": "ResNet-18 (224)", "metric": "acc", "site": 0.863, "quoted": 0.864,
     "quoted_in": "two repositories quoting 'MedMNIST v2, Table 3' (e.g. a PneumoniaMNIST verification note "
                  "and a pneumonia-detection README)"},
    {"dataset": "pathmnist", "method": "ResNet-18 (224)", "metric": "auc/acc", "site": "0.990/0.905",
     "quoted": "0.989/0.909", "quoted_in": "a PathMNIST project README quoting the official benchmark"},
    {"dataset": "chestmnist", "method": "ResNet-18 (224)", "metric": "auc", "site": 0.772, "quoted": 0.773,
     "quoted_in": "two ChestMNIST READMEs quoting 'MedMNIST v2 Table 3'"},
]


def published_rows(dataset: str) -> list[dict]:
    """The benchmark's rows for ``dataset`` (MedMNIST flag, e.g. ``breastmnist``): method, auc, acc; [] if absent."""
    table = MEDMNIST_V2.get(dataset.lower())
    return [] if table is None else [{"method": m, **table[m]} for m in MEDMNIST_V2_METHODS]


def published_best(dataset: str) -> dict | None:
    """{"auc": {"value", "methods"}, "acc": {...}}: the best published value of each metric and who reached it."""
    rows = published_rows(dataset)
    if not rows:
        return None
    out = {}
    for metric in ("auc", "acc"):
        best = max(r[metric] for r in rows)
        out[metric] = {"value": best, "methods": [r["method"] for r in rows if r[metric] == best]}
    return out


TIMM_TOP1_SOURCE = {
    "repository": "huggingface/pytorch-image-models",
    "path": "results/results-imagenet.csv",
    "commit": "0173a139a2c66db3a41ebfe1d8ac4fb02483642e",
    "url": "https://github.com/huggingface/pytorch-image-models/blob/main/results/results-imagenet.csv",
    "column": "top1 (ImageNet-1k validation, %)",
}

# "<timm model>.<default pretrained tag>" -> (top-1 %, evaluation image size)
TIMM_IMAGENET_TOP1: dict[str, tuple[float, int]] = {
    "densenet121.ra_in1k": (76.500, 288),
    "densenet121.tv_in1k": (74.764, 224),
    "densenet161.tv_in1k": (77.358, 224),
    "densenet169.tv_in1k": (75.900, 224),
    "densenet201.tv_in1k": (77.286, 224),
    "inception_v3.tv_in1k": (77.434, 299),
    "inception_v4.tf_in1k": (80.156, 299),
    "mnasnet_100.rmsp_in1k": (74.650, 224),
    "efficientnet_b0.ra_in1k": (77.694, 224),
    "efficientnet_b1.ft_in1k": (78.800, 256),
    "efficientnet_b2.ra_in1k": (80.610, 288),
    "efficientnet_b3.ra2_in1k": (82.242, 320),
    "efficientnet_b4.ra2_in1k": (83.414, 384),
    "mobilenetv2_100.ra_in1k": (72.976, 224),
    "mobilenetv3_large_100.ra_in1k": (75.766, 224),
    "mobilenetv3_small_100.lamb_in1k": (67.656, 224),
    "tf_efficientnet_lite0.in1k": (74.830, 224),
    "convnext_tiny.in12k_ft_in1k": (84.450, 288),
    "convnext_tiny.fb_in1k": (82.698, 288),
    "convmixer_768_32.in1k": (80.168, 224),
    "convmixer_1536_20.in1k": (81.362, 224),
}
