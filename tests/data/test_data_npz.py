"""Precomputed features from .npz files."""

import numpy as np
import pytest
import torch

from unimargin.data import load_dataset


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_with_explicit_test_split_and_classes(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 5)), rng.integers(0, 3, 20)
    xt, yt = rng.normal(size=(7, 5)), rng.integers(0, 3, 7)
    f = _save(tmp_path / "f.npz", x=x, y=y, x_test=xt, y_test=yt, classes=np.array(["a", "b", "c"]))
    s = load_dataset("npz", path=f)
    assert s.classes == ["a", "b", "c"] and s.in_shape == (5,)
    assert torch.equal(s.x_train, torch.from_numpy(x.astype(np.float32))) and s.y_test.tolist() == yt.tolist()
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    s2 = load_dataset("npz", data_dir=tmp_path)  # directory with exactly one file
    assert torch.equal(s2.x_test, s.x_test)


def test_stratified_split_without_test_arrays(tmp_path):
    y = np.repeat(np.arange(4), 10)
    x = np.arange(40, dtype=np.float64)[:, None].repeat(2, 1)  # x encodes the sample index
    s = load_dataset("npz", path=_save(tmp_path / "f.npz", x=x, y=y), test_fraction=0.3)
    assert s.classes == ["0", "1", "2", "3"]
    assert torch.equal(torch.bincount(s.y_test), torch.full((4,), 3))
    idx = torch.cat([s.x_train[:, 0], s.x_test[:, 0]]).long()
    assert sorted(idx.tolist()) == list(range(40))  # a partition
    assert torch.equal(torch.cat([s.y_train, s.y_test]), torch.from_numpy(y)[idx])  # labels travel with x


@pytest.mark.parametrize(
    "arrays,match",
    [
        (dict(x=np.zeros((4, 2))), r"missing key\(s\) \['y'\]"),
        (dict(x=np.zeros((4, 2)), y=np.array([0, 1, 0])), "4 inputs but 3 labels"),
        (dict(x=np.zeros((4, 2)), y=np.array([0, 1, 2, 0]), classes=np.array(["a", "b"])), r"outside 0..1"),
        (dict(x=np.zeros((4, 2)), y=np.array([0.0, 1, 0, 1])), "1-D integer array"),
        (dict(x=np.array([[0, np.nan]] * 4), y=np.array([0, 1, 0, 1])), "NaN or Inf"),
        (dict(x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]), x_test=np.zeros((2, 2))), "x_test and y_test must be given together"),
        (dict(x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]), x_test=np.zeros((2, 3)), y_test=np.array([0, 1])), "per-sample shape"),
    ],
)
def test_bad_files(tmp_path, arrays, match):
    f = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_dataset("npz", path=f)


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(ValueError, match="npz: path .* is required"):
        load_dataset("npz")
    with pytest.raises(ValueError, match="npz: file .*nope.npz does not exist"):
        load_dataset("npz", path=tmp_path / "nope.npz")
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match=r"npz: cannot read .*c.npz"):
        load_dataset("npz", path=tmp_path / "c.npz")


def test_npz_open_set(tmp_path):
    y = np.repeat(np.arange(3), 6)
    x = np.stack([y, np.arange(18)], 1).astype(float)
    s = load_dataset("npz", path=_save(tmp_path / "f.npz", x=x, y=y), unknown_classes=[0])
    assert s.classes == ["1", "2"] and (s.x_train[:, 0] != 0).all() and (s.x_unknown[:, 0] == 0).all()
    assert torch.equal(s.y_train, s.x_train[:, 0].long() - 1)
