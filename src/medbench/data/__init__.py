"""Data sources, each turned into an :class:`ImageDataset` of uint8 tensors."""
from medbench.config.sources import PREFIXES, parse_dataset
from medbench.data.dataset import SPLITS, ImageDataset, Split, check_classes, item_ids
from medbench.data.medmnist import (
    CATALOGUE,
    SIZES,
    data_root,
    download,
    list_datasets,
    load_medmnist,
    read_npz,
)
from medbench.errors import MedbenchError

__all__ = [
    "SPLITS", "ImageDataset", "Split", "CATALOGUE", "SIZES", "data_root", "download",
    "list_datasets", "load_medmnist", "read_npz", "load_dataset", "item_ids",
]


OWN_DATA = tuple(PREFIXES.values())  # ("folder:", "csv:")


def load_dataset(name: str, size: int = 28, data_dir=None, *, download_missing: bool = True,
                 progress: bool = True, memory_budget: float | None = None, **options) -> ImageDataset:
    """Load a dataset by name at an image size: a MedMNIST flag such as ``"breastmnist"``, ``"folder:PATH"``
    (:func:`medbench.data.folders.load_folder`) or ``"csv:FILE"`` (:func:`medbench.data.tables.load_csv`).

    ``options`` go to the folder / CSV loader; decoded own data is cached (``medbench cache info``).
    Images that take more than ``memory_budget`` GB (default: :func:`medbench.data.memory.memory_budget`) are read
    in batches from a store on disk instead of being held whole (:mod:`medbench.data.store`).
    A single-label dataset whose train or val split holds fewer than two classes is refused
    (:func:`medbench.data.dataset.check_classes`): nothing can be learnt, or no epoch and threshold chosen.
    """
    kind, where = parse_dataset(name)
    if kind == "folder":
        from medbench.data.cache import default_cache_dir
        from medbench.data.folders import load_folder

        ds = load_folder(where, size=size, cache_dir=default_cache_dir(), progress=progress,
                         memory_budget=memory_budget, **options)
    elif kind == "csv":
        from medbench.data.cache import default_cache_dir
        from medbench.data.tables import load_csv

        ds = load_csv(where, size=size, cache_dir=default_cache_dir(), progress=progress,
                      memory_budget=memory_budget, **options)
    else:
        if options:
            raise MedbenchError(f"{', '.join(sorted(options))}: options for folder:/csv: datasets, not MedMNIST's "
                                f"'{name}'")
        ds = load_medmnist(name, size=size, data_dir=data_dir, download_missing=download_missing, progress=progress,
                           memory_budget=memory_budget)
    check_classes(ds, ds.source or name)
    return ds
