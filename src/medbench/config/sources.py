"""Where a run's images come from: a MedMNIST dataset, a folder of class folders, or a CSV table.

The config keeps flat fields (``dataset: "folder:PATH"``, ``label_regex``, ...): they are the command line's and the
study grids' vocabulary, and every config.yaml ever written uses them. :func:`source_of` turns them into one typed
source holding only the options of its kind. The ``folder:`` / ``csv:`` prefix is parsed here and nowhere else.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

PREFIXES = {"folder": "folder:", "csv": "csv:"}  # own-data kinds and how a dataset name starts for each


class MedMNISTSource(BaseModel):
    """A MedMNIST dataset by name (e.g. ``breastmnist``)."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["medmnist"] = "medmnist"
    name: str

    def loader_options(self) -> dict[str, Any]:
        return {}


class _OwnSource(BaseModel):
    """Options every own-data source takes: how images are fitted, how splits are drawn, unreadable files."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    fit: str
    val_from_train: float
    test_from_train: float
    group_regex: str | None
    split_seed: int
    skip_bad: bool

    def _shared_options(self) -> dict[str, Any]:
        return dict(resize=self.fit, val_from_train=self.val_from_train, test_from_train=self.test_from_train,
                    group_regex=self.group_regex, seed=self.split_seed, skip_bad=self.skip_bad)


class FolderSource(_OwnSource):
    """``folder:PATH``: a class per sub-folder (optional train/val/test), or classes from a regex on the path."""
    kind: Literal["folder"] = "folder"
    label_regex: str | None

    def loader_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`medbench.data.folders.load_folder`."""
        return dict(label_regex=self.label_regex, **self._shared_options())


class CSVSource(_OwnSource):
    """``csv:FILE``: a table of image paths and label columns (one: classes; several: multi-label)."""
    kind: Literal["csv"] = "csv"
    image_col: str
    label_cols: list[str]
    split_col: str | None
    uncertain: str
    allow_outside_root: bool

    def loader_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`medbench.data.tables.load_csv`."""
        return dict(image_col=self.image_col, label_cols=list(self.label_cols), split_col=self.split_col,
                    uncertain=self.uncertain, **self._shared_options(), allow_outside_root=self.allow_outside_root)


Source = MedMNISTSource | FolderSource | CSVSource
SOURCES: dict[str, type[BaseModel]] = {"medmnist": MedMNISTSource, "folder": FolderSource, "csv": CSVSource}
_WHERE = {"medmnist": "name", "folder": "path", "csv": "path"}
# flat config fields that belong to own-data sources only (fit also shapes new images for `medbench predict`, for
# every kind, so it is a setting of every run, not only an option of a source)
OWN_DATA_FIELDS = tuple(dict.fromkeys(f for cls in (FolderSource, CSVSource) for f in cls.model_fields
                                      if f not in ("kind", "path")))
EVERY_KIND = ("fit",)


def parse_dataset(dataset: str) -> tuple[str, str]:
    """``"folder:PATH"`` -> ``("folder", "PATH")``, ``"csv:FILE"`` -> ``("csv", "FILE")``, else
    ``("medmnist", name)``."""
    for kind, prefix in PREFIXES.items():
        if dataset.startswith(prefix):
            return kind, dataset[len(prefix):]
    return "medmnist", dataset


def options_of(kind: str) -> tuple[str, ...]:
    """The flat fields a kind of dataset takes as options."""
    return tuple(f for f in SOURCES[kind].model_fields if f not in ("kind", _WHERE[kind]))


def stray_options(dataset: str, flat: Mapping[str, Any], defaults: Mapping[str, Any]) -> str | None:
    """One line naming the own-data options set (to other than their defaults) that ``dataset``'s kind does not
    take, or None. They would be ignored silently otherwise."""
    kind, _ = parse_dataset(dataset)
    taken = set(options_of(kind)) | set(EVERY_KIND)
    stray = [f for f in OWN_DATA_FIELDS if f not in taken and flat[f] != defaults[f]]
    if not stray:
        return None
    owners = {f: "/".join(PREFIXES[k] for k in PREFIXES if f in options_of(k)) for f in stray}
    listed = ", ".join(f"{f} ({owners[f]} only)" for f in stray)
    what = "MedMNIST" if kind == "medmnist" else PREFIXES[kind]
    return (f"{listed} {'does' if len(stray) == 1 else 'do'} not apply to {what} dataset '{dataset}'; remove "
            f"{'it' if len(stray) == 1 else 'them'}")


def missing_options(dataset: str, flat: Mapping[str, Any]) -> str | None:
    """One line when a kind's required options are missing (a CSV dataset needs its image and label columns)."""
    kind, _ = parse_dataset(dataset)
    if kind == "csv" and (not flat["image_col"] or not flat["label_cols"]):
        return f"{dataset}: a CSV dataset needs --image-col and --label-cols"
    return None


def source_of(flat: Mapping[str, Any]) -> Source:
    """The typed source of a config's flat fields (``flat``: the RunConfig's values by field name)."""
    kind, where = parse_dataset(flat["dataset"])
    return SOURCES[kind](**{_WHERE[kind]: where}, **{f: flat[f] for f in options_of(kind)})
