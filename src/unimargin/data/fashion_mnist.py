"""Fashion-MNIST (Xiao et al. 2017) from its IDX files.

Files (gzip ``.gz`` or plain): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` in ``data_dir`` (default
``/usr/share/datasets/fashion-mnist``, installed by ``apt-get install dataset-fashion-mnist``).
Output: x (N, 1, 28, 28) float32 in [0, 1] (pixel / 255), 60000 train / 10000 test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .idx import read_idx
from .registry import DatasetSplits, register_dataset

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise ValueError(f"fashion-mnist: {stem}[.gz] not found in {directory}")


def _load_split(directory: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_path = _find(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(f"fashion-mnist: {images_path} / {labels_path} must hold unsigned bytes")
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected 28x28 images, header says {images.shape[1:]}")
    if len(images) != len(labels):
        raise ValueError(f"fashion-mnist: {images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.size and labels.max() >= len(CLASSES):
        raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..{len(CLASSES) - 1}")
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


@register_dataset("fashion-mnist", default_model="cnn", layout="image")
def load_fashion_mnist(data_dir: str | os.PathLike | None = None, seed: int | None = None) -> DatasetSplits:
    """Fashion-MNIST train/test tensors. ``seed`` has no effect (the split is fixed by the files)."""
    directory = Path(data_dir if data_dir is not None else DEFAULT_DIR).expanduser()
    if not directory.is_dir():
        hint = " (install it: apt-get update && apt-get install -y dataset-fashion-mnist)" if data_dir is None else ""
        raise ValueError(f"fashion-mnist: data_dir {directory} does not exist{hint}")
    x_train, y_train = _load_split(directory, "train")
    x_test, y_test = _load_split(directory, "t10k")
    return DatasetSplits(x_train, y_train, x_test, y_test, list(CLASSES))
