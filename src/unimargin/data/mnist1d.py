"""MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package: the embedded default.

Nothing is downloaded: :func:`mnist1d.data.make_dataset` with the package's default
arguments (``get_dataset_args()``: 5000 samples, 80 % train, 40-sample signals, seed 42)
is called directly; ``mnist1d.data.get_dataset`` is avoided because it downloads a pickle.
The result is cached as ``mnist1d_seed{seed}_v1.npz`` in ``cache_dir`` (default
``$UNIMARGIN_CACHE`` or ``~/.cache/unimargin``), so only the first load pays the ~3 s of
generation. Output: x (N, 1, 40) float32 (the package's globally standardised signal),
4000 train / 1000 test, 10 classes named "0".."9".
"""

from __future__ import annotations

import io
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from ..cache import default_cache_dir
from unimargin.io import atomic_write_bytes

from .registry import DatasetSplits, register_dataset

CACHE_VERSION = 1
DEFAULT_SEED = 42  # mnist1d.data.get_dataset_args()["seed"]
CLASSES = [str(i) for i in range(10)]


def _generate(seed: int) -> dict[str, np.ndarray]:
    """Run the package's generator with its default arguments (only the seed may differ).

    make_dataset seeds numpy's and Python's *global* RNGs; their states are restored so that
    loading data never perturbs a caller's random streams.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("dataset 'mnist1d' needs the mnist1d package: pip install mnist1d") from exc
    args = get_dataset_args()
    args.seed = int(seed)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    except Exception as exc:  # corrupt or partial cache: regenerate rather than fail
        warnings.warn(f"ignoring unreadable MNIST-1D cache {path}: {exc}", stacklevel=3)
        return None
    if data["x"].shape != (4000, 40) or data["x_test"].shape != (1000, 40):
        warnings.warn(f"ignoring MNIST-1D cache {path} with unexpected shapes", stacklevel=3)
        return None
    return data


def _write_cache(path: Path, data: dict[str, np.ndarray]) -> None:
    """Atomic write (unimargin.io) so a crash never leaves a half-written cache and concurrent
    ranks/processes each rename a complete file."""
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    try:
        atomic_write_bytes(buffer.getvalue(), path)
    except OSError as exc:  # read-only home etc.: still usable, just not cached
        warnings.warn(f"could not write MNIST-1D cache {path}: {exc}", stacklevel=3)


@register_dataset("mnist1d", default_model="cnn1d", layout="signal")
def load_mnist1d(cache_dir: str | os.PathLike | None = None, seed: int | None = None) -> DatasetSplits:
    """MNIST-1D train/test tensors, from the cache or generated once.

    ``seed`` is the generator seed (default 42, the package default; the published dataset).
    """
    seed = DEFAULT_SEED if seed is None else int(seed)
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
    path = path / f"mnist1d_seed{seed}_v{CACHE_VERSION}.npz"
    data = _read_cache(path) if path.exists() else None
    if data is None:
        data = _generate(seed)
        _write_cache(path, data)

    def x(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(1)

    def y(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

    return DatasetSplits(x(data["x"]), y(data["y"]), x(data["x_test"]), y(data["y_test"]), list(CLASSES))
