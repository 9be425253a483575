"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

Fixed stratified split (``test_fraction=0.25``, ``seed=0`` by default, see
:func:`~unimargin.data.registry.split_train_test`); x (N, 1, 8, 8) = pixel / 16 in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from .registry import DatasetSplits, register_dataset, split_train_test


@register_dataset("digits", default_model="mlp", layout="image")
def load_digits(test_fraction: float = 0.25, seed: int | None = None) -> DatasetSplits:
    """Digits train/test tensors; ``seed`` (default 0) and ``test_fraction`` fix the split."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("dataset 'digits' needs scikit-learn: pip install scikit-learn") from exc
    bunch = sk_load_digits()
    x = torch.from_numpy((bunch.data / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = split_train_test(bunch.target, test_fraction, seed, "digits")
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return DatasetSplits(x[train_idx], y[train_idx], x[test_idx], y[test_idx], [str(i) for i in range(10)])
