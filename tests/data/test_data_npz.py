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


def test_tabular_npz_is_tabular_with_default_model_mlp(tmp_path):
    """issue 10/12: an (N, d) npz loads as (N, d) features, per-feature statistics, model mlp."""
    from unimargin.data.transforms import feature_stats
    from unimargin.models import default_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)) * np.array([1.0, 10.0, 0.0]) + np.array([0.0, 50.0, 4.0])  # feature 2 constant
    s = load_dataset("npz", path=_save(tmp_path / "t.npz", x=x, y=np.repeat(np.arange(2), 20)))
    assert s.layout == "tabular" and s.x_train.shape == (32, 3) and default_model("npz") == "mlp"
    mean, std = feature_stats(s.x_train)
    assert mean.shape == (3,) and std[2] == 1.0 and std[1] > 5


def test_labels_with_gaps_are_remapped_once_with_original_names(tmp_path):
    """issue 11 item 9: labels {0, 5, 9} -> 3 classes named "0", "5", "9", said once."""
    y = np.repeat([0, 5, 9], 5)
    x = np.stack([y, np.arange(15)], 1).astype(float)  # x remembers the original label
    f = _save(tmp_path / "g.npz", x=x, y=y)
    with pytest.warns(UserWarning, match=r"labels \{0, 5, 9\} are not contiguous; remapped to class ids 0..2") as rec:
        s = load_dataset("npz", path=f)
    assert len(rec) == 1 and s.classes == ["0", "5", "9"] and s.num_classes == 3
    for xs, ys in ((s.x_train, s.y_train), (s.x_test, s.y_test)):
        assert [s.classes[int(c)] for c in ys] == [str(int(v)) for v in xs[:, 0]]


def test_gapped_labels_across_train_and_test_use_one_mapping(tmp_path):
    f = _save(tmp_path / "g.npz", x=np.zeros((4, 2)), y=np.array([3, 7, 3, 7]),
              x_test=np.zeros((3, 2)), y_test=np.array([7, 3, 11]))
    with pytest.warns(UserWarning, match="not contiguous"):
        s = load_dataset("npz", path=f)
    assert s.classes == ["3", "7", "11"] and s.y_train.tolist() == [0, 1, 0, 1] and s.y_test.tolist() == [1, 0, 2]


def test_contiguous_labels_give_no_warning(tmp_path, recwarn):
    load_dataset("npz", path=_save(tmp_path / "c.npz", x=np.zeros((10, 2)), y=np.arange(10) % 2))
    assert not [w for w in recwarn if "contiguous" in str(w.message)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_too_few_samples_name_the_file(tmp_path, n):
    """issue 11 item 13: an npz with 2 samples gave numpy's 'zero-size array'."""
    f = _save(tmp_path / "tiny.npz", x=np.zeros((n, 2)), y=np.arange(n) % 2)
    with pytest.raises(ValueError, match=r"tiny.npz.*(sample\(s\); training needs at least 2|too few to split off a test set)"):
        load_dataset("npz", path=f)


def test_file_validation_split_is_used(tmp_path):
    rng = np.random.default_rng(1)
    f = _save(tmp_path / "v.npz", x=rng.normal(size=(20, 3)), y=np.arange(20) % 2,
              x_test=rng.normal(size=(6, 3)), y_test=np.arange(6) % 2,
              x_val=rng.normal(size=(4, 3)) + 100, y_val=np.arange(4) % 2)
    s = load_dataset("npz", path=f, val_fraction=0.5)  # the file's own split wins over val_fraction
    assert len(s.x_val) == 4 and (s.x_val > 50).all() and len(s.x_train) == 20
    with pytest.raises(ValueError, match="x_val and y_val must be given together"):
        load_dataset("npz", path=_save(tmp_path / "w.npz", x=np.zeros((4, 2)), y=np.arange(4) % 2, x_val=np.zeros((2, 2))))


def test_five_dimensional_x_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"'x' has shape \(4, 1, 2, 2, 2\); expected \(N, d\)"):
        load_dataset("npz", path=_save(tmp_path / "5.npz", x=np.zeros((4, 1, 2, 2, 2)), y=np.arange(4) % 2))
