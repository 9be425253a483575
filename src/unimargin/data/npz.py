"""Precomputed inputs or features from a ``.npz`` file.

Keys: ``x`` (N, ...) numeric, ``y`` (N,) integer labels; optional ``x_test`` / ``y_test``
(else a fixed stratified split with ``test_fraction`` (0.2) and ``seed`` (0)), optional
``x_val`` / ``y_val`` (the file's own validation split, used instead of ``val_fraction``),
optional ``classes`` (K,) strings, with labels in 0..K-1. Without ``classes`` the classes are
the distinct labels: labels with gaps (e.g. {0, 5, 9}) are remapped to 0..K-1 and the
original labels become the class names (one warning says so).
Layout from x: (N, d) tabular features (a 1-D ``x`` becomes (N, 1)), (N, C, L) signals or
(N, C, H, W) images. The file is read with ``allow_pickle=False``.
Give the file as ``path`` or ``data_dir`` (a .npz file, or a directory holding exactly one).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from .registry import DatasetSplits, contiguous_labels, register_dataset, split_train_test, resolve_data_file


def _inputs(arr: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if arr.dtype.kind not in "biuf" or arr.ndim == 0:
        raise ValueError(f"{path}: {key!r} must be a numeric array (N, ...), got dtype {arr.dtype} shape {arr.shape}")
    if arr.ndim > 4:
        raise ValueError(
            f"{path}: {key!r} has shape {arr.shape}; expected (N, d) features, (N, C, L) signals or (N, C, H, W) images"
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: {key!r} contains NaN or Inf")
    return torch.from_numpy(arr.reshape(len(arr), -1) if arr.ndim == 1 else arr)


def _labels(arr: np.ndarray, key: str, path: Path, n: int, k: int | None) -> np.ndarray:
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"{path}: {key!r} must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
    if len(arr) != n:
        raise ValueError(f"{path}: {n} inputs but {len(arr)} labels in {key!r}")
    if arr.size and (arr.min() < 0 or (k is not None and arr.max() >= k)):
        bound = f"0..{k - 1}" if k is not None else ">= 0"
        raise ValueError(f"{path}: labels in {key!r} outside {bound} (found {arr.min()}..{arr.max()})")
    return arr.astype(np.int64)


def _pair(arrays: dict, split: str, file: Path, k: int | None, shape) -> tuple[torch.Tensor, np.ndarray] | None:
    """(x_split, y_split) of an optional split stored in the file, or None."""
    xk, yk = f"x_{split}", f"y_{split}"
    if (xk in arrays) != (yk in arrays):
        raise ValueError(f"{file}: {xk} and {yk} must be given together")
    if xk not in arrays:
        return None
    x = _inputs(arrays[xk], xk, file)
    if x.shape[1:] != shape:
        raise ValueError(f"{file}: x has per-sample shape {tuple(shape)} but {xk} {tuple(x.shape[1:])}")
    return x, _labels(arrays[yk], yk, file, len(x), k)


@register_dataset("npz", default_model="mlp", layout=("tabular", "signal", "image"))
def load_npz(
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
    seed: int | None = None,
) -> DatasetSplits:
    """Arrays ``x``/``y`` (+ optional test/validation splits and ``classes``) from a .npz file."""
    file = resolve_data_file("npz", ".npz", path, data_dir)
    try:
        with np.load(file, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ValueError(f"npz: cannot read {file} ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"{file}: missing key(s) {missing}; found {sorted(arrays)}")
    names = None
    if "classes" in arrays:
        names = [str(c) for c in np.asarray(arrays["classes"]).reshape(-1)]
    k = None if names is None else len(names)
    x = _inputs(arrays["x"], "x", file)
    y = _labels(arrays["y"], "y", file, len(x), k)
    test = _pair(arrays, "test", file, k, x.shape[1:])
    val = _pair(arrays, "val", file, k, x.shape[1:])
    if len(x) < 2:
        raise ValueError(f"{file}: 'x' holds {len(x)} sample(s); training needs at least 2")
    if test is None:
        tr, te = split_train_test(y, test_fraction, seed, f"npz {file}")
        x, y, test = x[tr], y[tr], (x[te], y[te])
    parts = [y, test[1]] + ([] if val is None else [val[1]])
    labels, classes = contiguous_labels(*parts, source=f"npz {file}", names=names)
    to = torch.from_numpy
    out = DatasetSplits(x, to(labels[0]), test[0], to(labels[1]), classes)
    if val is not None:
        out.x_val, out.y_val = val[0], to(labels[2])
    return out
