"""scikit-learn digits: values, shape and the fixed stratified split."""

import numpy as np
import torch
from sklearn.datasets import load_digits

from unimargin.data import load_dataset


def test_digits_matches_sklearn_and_split_is_fixed():
    ref = load_digits()
    s = load_dataset("digits")
    assert s.x_train.shape[1:] == (1, 8, 8) and len(s.x_train) + len(s.x_test) == len(ref.target)
    assert 0 <= s.x_train.min() and s.x_train.max() == 1
    # every loaded sample is a sklearn sample /16 with its label (multiset equality)
    ours = torch.cat([s.x_train, s.x_test]).flatten(1).numpy() * 16
    ours_y = torch.cat([s.y_train, s.y_test]).numpy()
    key = lambda X, Y: sorted(map(tuple, np.column_stack([X, Y]).round().astype(int).tolist()))  # noqa: E731
    assert key(ours, ours_y) == key(ref.data, ref.target)
    counts = np.bincount(ref.target)
    assert np.array_equal(np.bincount(s.y_test.numpy()), np.rint(counts * 0.25).astype(int))
    assert torch.equal(load_dataset("digits").x_test, s.x_test)
    assert not torch.equal(load_dataset("digits", seed=1).x_test, s.x_test)  # the seed picks the split
