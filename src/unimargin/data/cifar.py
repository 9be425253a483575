"""CIFAR-10 / CIFAR-100 from the standard python-pickle directories (no download).

- cifar10: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``
  (``label_names``), i.e. the content of ``cifar-10-python.tar.gz``.
- cifar100: ``train``, ``test``, ``meta`` (``fine_label_names`` / ``coarse_label_names``),
  i.e. ``cifar-100-python.tar.gz``; ``label_type="fine"`` (default, 100 classes) or
  ``"coarse"`` (20 super-classes).

``data_dir`` may be that directory or its parent (holding ``cifar-10-batches-py`` /
``cifar-100-python``). The pickles are read with a restricted unpickler that only rebuilds
plain containers and numpy arrays, so a tampered file cannot execute code.
Output: x (N, 3, 32, 32) float32 = pixel / 255 in [0, 1].
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .registry import DatasetSplits, register_dataset
from .transforms import crop_flip

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of numpy arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"CIFAR file not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as exc:
        raise ValueError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    # python-2 pickles have bytes keys
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(meta: dict, key: str, path: Path) -> list[str]:
    if key not in meta:
        raise ValueError(f"{path}: missing key {key!r}")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[key]]


def _batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path)
    for key in ("data", label_key):
        if key not in d:
            raise ValueError(f"{path}: missing key {key!r}")
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()})")
    return data, labels.astype(np.int64)


def _resolve_dir(name: str, data_dir, subdir: str, marker: str) -> Path:
    if data_dir is None:
        raise ValueError(f"{name}: data_dir is required (a local copy of the python pickles, see docs/data.md)")
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise ValueError(f"{name}: data_dir {directory} does not exist")
    if not (directory / marker).exists() and (directory / subdir).is_dir():
        directory = directory / subdir
    return directory


def _to_tensors(parts) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(data).reshape(-1, 3, 32, 32).to(torch.float32).div_(255.0)
    return x, torch.from_numpy(labels)


@register_dataset("cifar10", default_model="resnet18", layout="image", augmentation=crop_flip)
def load_cifar10(data_dir: str | os.PathLike | None = None, seed: int | None = None) -> DatasetSplits:
    """CIFAR-10 (50000 / 10000, 10 classes). ``seed`` has no effect (fixed split)."""
    directory = _resolve_dir("cifar10", data_dir, "cifar-10-batches-py", "batches.meta")
    meta_path = directory / "batches.meta"
    classes = _names(_load_pickle(meta_path), "label_names", meta_path)
    train = [_batch(directory / f"data_batch_{i}", "labels", len(classes)) for i in range(1, 6)]
    test = [_batch(directory / "test_batch", "labels", len(classes))]
    return DatasetSplits(*_to_tensors(train), *_to_tensors(test), classes)


@register_dataset("cifar100", default_model="resnet18", layout="image", augmentation=crop_flip)
def load_cifar100(
    data_dir: str | os.PathLike | None = None, label_type: str = "fine", seed: int | None = None
) -> DatasetSplits:
    """CIFAR-100 (50000 / 10000) with ``fine`` (100) or ``coarse`` (20) labels. ``seed`` has no effect."""
    if label_type not in ("fine", "coarse"):
        raise ValueError(f"cifar100: label_type must be 'fine' or 'coarse', got {label_type!r}")
    directory = _resolve_dir("cifar100", data_dir, "cifar-100-python", "meta")
    meta_path = directory / "meta"
    classes = _names(_load_pickle(meta_path), f"{label_type}_label_names", meta_path)
    key = f"{label_type}_labels"
    train = [_batch(directory / "train", key, len(classes))]
    test = [_batch(directory / "test", key, len(classes))]
    return DatasetSplits(*_to_tensors(train), *_to_tensors(test), classes)
