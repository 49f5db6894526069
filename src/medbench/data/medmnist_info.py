"""The MedMNIST 2D catalogue (from the ``medmnist`` package's INFO): names, sizes, file names, URLs, MD5s, tasks."""
from __future__ import annotations

import os
from pathlib import Path

from medmnist.info import DEFAULT_ROOT as _MEDMNIST_ROOT
from medmnist.info import INFO

from medbench.errors import MedbenchError

SIZES = (28, 64, 128, 224)
# 2D sets only: the 3D volumes ("...mnist3d") need another pipeline.
CATALOGUE: dict[str, dict] = {k: v for k, v in INFO.items() if not k.endswith("3d")}
MIRROR_ENV = "MEDBENCH_MIRROR"  # base URL that replaces Zenodo's, e.g. an institutional mirror
# MedMNIST's task names -> medbench's (medbench.tasks.TASKS); here, so that the data layer needs nothing above it
TASK_NAMES = {"binary-class": "binary", "multi-class": "multiclass",
              "multi-label, binary-class": "multilabel", "ordinal-regression": "ordinal"}


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` > ``$MEDBENCH_DATA`` > ``~/.medmnist`` (the medmnist package's own default)."""
    root = data_dir or os.environ.get("MEDBENCH_DATA") or _MEDMNIST_ROOT
    return Path(root).expanduser()


def entry(name: str) -> dict:
    """The catalogue entry of ``name``; an unknown name is an error that suggests close ones."""
    if name not in CATALOGUE:
        import difflib

        close = difflib.get_close_matches(name, CATALOGUE, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise MedbenchError(f"unknown dataset '{name}'.{hint} Valid: {', '.join(CATALOGUE)}")
    return CATALOGUE[name]


def task_of(info: dict) -> str:
    """medbench's task name for a catalogue entry."""
    return TASK_NAMES[info["task"]]


def class_names(info: dict) -> list[str]:
    return [info["label"][str(i)] for i in range(len(info["label"]))]


def check_size(size: int) -> None:
    if size not in SIZES:
        raise MedbenchError(f"MedMNIST size must be one of {', '.join(map(str, SIZES))}, not {size}; pass --size "
                            f"with one of them (folder: and csv: datasets take any size)")


def file_name(name: str, size: int = 28) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def expected_md5(name: str, size: int = 28) -> str:
    check_size(size)
    return entry(name)["MD5" if size == 28 else f"MD5_{size}"]


def url_for(name: str, size: int = 28) -> str:
    check_size(size)
    url = entry(name)["url" if size == 28 else f"url_{size}"]
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        url = mirror.rstrip("/") + "/" + file_name(name, size)
    return url


def expected_bytes(name: str, size: int) -> int:
    """Upper bound on the raw arrays of ``name`` at ``size``: uint8 images plus int64 labels, every split."""
    info = entry(name)
    n = sum(info["n_samples"].values())
    width = len(info["label"]) if task_of(info) == "multilabel" else 1
    return n * info["n_channels"] * size * size + n * width * 8


def list_datasets(data_dir=None) -> list[dict]:
    """One record per 2D dataset: task, channels, classes, split sizes and which sizes are on disk."""
    root = data_root(data_dir)
    out = []
    for name, info in CATALOGUE.items():
        out.append({
            "name": name,
            "task": task_of(info),
            "n_channels": info["n_channels"],
            "classes": class_names(info),
            "n_samples": dict(info["n_samples"]),
            "sizes": list(SIZES),
            "cached_sizes": [s for s in SIZES if (root / file_name(name, s)).is_file()],
            "license": info.get("license"),
        })
    return out
