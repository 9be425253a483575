"""Precomputed inputs or features from a ``.npz`` file.

Keys: ``x`` (N, ...) numeric, ``y`` (N,) integer labels; optional ``x_test`` / ``y_test``
(else a fixed stratified split with ``test_fraction`` (0.2) and ``seed`` (0)); optional
``classes`` (K,) strings, else the classes are "0".."max(y)". Labels must lie in 0..K-1.
x keeps its per-sample shape (a 1-D ``x`` becomes (N, 1)); e.g. (N, d) features feed the
``mlp`` backbone. The file is read with ``allow_pickle=False``.
Give the file as ``path`` or ``data_dir`` (a .npz file, or a directory holding exactly one).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from .registry import DatasetSplits, register_dataset, stratified_split_indices


def _resolve_path(path, data_dir) -> Path:
    if path is not None and data_dir is not None:
        raise ValueError("npz: give either path or data_dir, not both")
    target = path if path is not None else data_dir
    if target is None:
        raise ValueError("npz: path (or data_dir) to a .npz file is required")
    target = Path(target).expanduser()
    if target.is_dir():
        found = sorted(target.glob("*.npz"))
        if len(found) != 1:
            raise ValueError(f"npz: directory {target} must hold exactly one .npz file, found {len(found)}")
        target = found[0]
    if not target.is_file():
        raise ValueError(f"npz: file {target} does not exist")
    return target


def _inputs(arr: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if arr.dtype.kind not in "biuf" or arr.ndim == 0:
        raise ValueError(f"{path}: {key!r} must be a numeric array (N, ...), got dtype {arr.dtype} shape {arr.shape}")
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


@register_dataset("npz")
def load_npz(
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
    seed: int | None = None,
) -> DatasetSplits:
    """Load ``x``/``y`` (+ optional ``x_test``/``y_test``/``classes``) from a .npz file."""
    file = _resolve_path(path, data_dir)
    try:
        with np.load(file, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ValueError(f"npz: cannot read {file} ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"{file}: missing key(s) {missing}; found {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{file}: x_test and y_test must be given together")
    classes = None
    if "classes" in arrays:
        classes = [str(c) for c in np.asarray(arrays["classes"]).reshape(-1)]
    k = None if classes is None else len(classes)
    x = _inputs(arrays["x"], "x", file)
    y = _labels(arrays["y"], "y", file, len(x), k)
    if "x_test" in arrays:
        x_test = _inputs(arrays["x_test"], "x_test", file)
        y_test = _labels(arrays["y_test"], "y_test", file, len(x_test), k)
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(f"{file}: x has per-sample shape {tuple(x.shape[1:])} but x_test {tuple(x_test.shape[1:])}")
        x_train, y_train = x, y
    else:
        tr, te = stratified_split_indices(y, test_fraction, 0 if seed is None else int(seed))
        x_train, y_train, x_test, y_test = x[tr], y[tr], x[te], y[te]
    if classes is None:
        classes = [str(i) for i in range(int(max(y_train.max(), y_test.max())) + 1)]
    return DatasetSplits(x_train, torch.from_numpy(y_train), x_test, torch.from_numpy(y_test), classes)
