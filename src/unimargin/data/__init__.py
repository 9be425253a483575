"""Dataset sources (DESIGN.md "Data"): every one returns CPU tensors in a :class:`DatasetSplits`.

>>> from unimargin.data import load_dataset
>>> ds = load_dataset("mnist1d")                      # embedded default, no download
>>> ds = load_dataset("fashion-mnist", unknown_classes=["Bag", "Ankle boot"])  # open set
>>> ds = load_dataset("digits", val_fraction=0.1, val_seed=0)  # + a validation split

Datasets: mnist1d, fashion-mnist, digits, cifar10, cifar100, folder, npz, csv (docs/data.md);
``register_dataset`` adds one (with its default model, augmentation and layout).
"""

from __future__ import annotations

from . import transforms
from .registry import (
    LAYOUTS,
    DatasetInfo,
    DatasetSplits,
    dataset_info,
    list_datasets,
    load_dataset,
    open_set_split,
    register_dataset,
    stratified_split_indices,
    validation_split,
)

# importing a source registers it
from . import mnist1d as _mnist1d  # noqa: E402,F401
from . import fashion_mnist as _fashion_mnist  # noqa: E402,F401
from . import digits as _digits  # noqa: E402,F401
from . import cifar as _cifar  # noqa: E402,F401
from . import folder as _folder  # noqa: E402,F401
from . import npz as _npz  # noqa: E402,F401
from . import csvfile as _csvfile  # noqa: E402,F401

__all__ = [
    "LAYOUTS",
    "DatasetInfo",
    "DatasetSplits",
    "load_dataset",
    "list_datasets",
    "dataset_info",
    "register_dataset",
    "open_set_split",
    "stratified_split_indices",
    "validation_split",
    "transforms",
]
