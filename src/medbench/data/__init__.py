"""Data sources, each turned into an :class:`ImageDataset` of uint8 tensors."""
from medbench.data.dataset import SPLITS, ImageDataset, Split
from medbench.data.medmnist import (
    CATALOGUE,
    SIZES,
    data_root,
    download,
    list_datasets,
    load_medmnist,
    read_npz,
)

__all__ = [
    "SPLITS", "ImageDataset", "Split", "CATALOGUE", "SIZES", "data_root", "download",
    "list_datasets", "load_medmnist", "read_npz", "load_dataset",
]


def load_dataset(name: str, size: int = 28, data_dir=None, *, download_missing: bool = True,
                 progress: bool = True) -> ImageDataset:
    """Load a dataset by name (a MedMNIST flag such as ``"breastmnist"``) at an image size."""
    return load_medmnist(name, size=size, data_dir=data_dir, download_missing=download_missing, progress=progress)
