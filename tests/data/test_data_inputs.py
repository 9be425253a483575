"""read_inputs (what predict reads) reproduces the training-time reading of each source."""

import numpy as np
import pytest
import torch
from PIL import Image

from unimargin.data import load_dataset
from unimargin.data.inputs import read_inputs


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _tree(root, rng):
    for c in ("ant", "bee"):
        for i in range(4):
            size = (10 + i, 8 + 2 * i)
            arr = rng.integers(0, 65536, size, dtype=np.uint16) if i % 2 else rng.integers(0, 256, size, dtype=np.uint8)
            _png(root / c / f"{i}.png", arr)


def test_image_folder_matches_training_tensors_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    _tree(tmp_path / "train", rng)
    _tree(tmp_path / "test", rng)
    s = load_dataset("folder", data_dir=tmp_path, image_size="6,5")
    got = read_inputs(tmp_path / "test", s.preprocessing)
    assert torch.equal(got.x, s.x_test) and torch.equal(got.labels, s.y_test)
    assert got.ids == [f"{c}/{i}.png" for c in ("ant", "bee") for i in range(4)]
    one = read_inputs(tmp_path / "test" / "bee" / "1.png", s.preprocessing)
    assert torch.equal(one.x, s.x_test[5:6]) and one.ids == ["1.png"] and one.labels is None
    flat = tmp_path / "new"
    _png(flat / "x.png", np.zeros((30, 30), np.uint8))
    assert read_inputs(flat, s.preprocessing).labels is None  # no class sub-directories: no labels


def test_unresized_run_refuses_other_image_sizes(tmp_path):
    for c in ("a", "b"):
        for i in range(3):
            _png(tmp_path / c / f"{i}.png", np.full((6, 6), 40 * i, np.uint8))
    s = load_dataset("folder", data_dir=tmp_path, test_fraction=0.34)
    _png(tmp_path / "odd" / "big.png", np.zeros((9, 9), np.uint8))
    with pytest.raises(ValueError, match=r"images are \(9, 9\) pixels but the model was trained on \(6, 6\)"):
        read_inputs(tmp_path / "odd", s.preprocessing)
    with pytest.raises(ValueError, match="the directory holds no images"):
        read_inputs((tmp_path / "empty").mkdir() or tmp_path / "empty", s.preprocessing)


def test_csv_with_and_without_label_column(tmp_path):
    header = "a,b,kind\n"
    rows = "".join(f"{i},{i * i},{'x' if i % 2 else 'y'}\n" for i in range(10))
    (tmp_path / "t.csv").write_text(header + rows)
    s = load_dataset("csv", path=tmp_path / "t.csv")
    (tmp_path / "new.csv").write_text("id,b,a,kind\n7,4,2,y\n8,9,3,x\n")
    got = read_inputs(tmp_path / "new.csv", s.preprocessing)
    assert got.x.tolist() == [[2.0, 4.0], [3.0, 9.0]] and got.ids == ["1", "2"]
    assert [s.classes[i] for i in got.labels] == ["y", "x"]
    (tmp_path / "nolabel.csv").write_text("a,b\n2,4\n")
    got = read_inputs(tmp_path / "nolabel.csv", s.preprocessing)
    assert got.labels is None and got.x.shape == (1, 2)
    (tmp_path / "bad.csv").write_text("a,b\n2,oops\n")
    with pytest.raises(ValueError, match="bad.csv: line 2, column 'b': 'oops' is not a number"):
        read_inputs(tmp_path / "bad.csv", s.preprocessing)


def test_arrays_and_errors(tmp_path):
    pre = load_dataset("mnist1d").preprocessing
    x = np.random.default_rng(0).normal(size=(3, 1, 40)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 9, 2]))
    np.save(tmp_path / "a.npy", x[0])  # one sample without batch dimension
    torch.save(torch.from_numpy(x), tmp_path / "a.pt")
    got = read_inputs(tmp_path / "a.npz", pre)
    assert torch.equal(got.x, torch.from_numpy(x)) and got.labels.tolist() == [0, 9, 2] and got.ids == ["0", "1", "2"]
    assert read_inputs(tmp_path / "a.npy", pre).x.shape == (1, 1, 40)
    assert torch.equal(read_inputs(tmp_path / "a.pt", pre).x, torch.from_numpy(x))
    np.save(tmp_path / "w.npy", np.zeros((2, 1, 39)))
    with pytest.raises(ValueError, match=r"w.npy: samples of shape \(1, 39\), but the model was trained on \(1, 40\)"):
        read_inputs(tmp_path / "w.npy", pre)
    with pytest.raises(ValueError, match="input .*missing.npz does not exist"):
        read_inputs(tmp_path / "missing.npz", pre)
    (tmp_path / "f.txt").write_text("hi")
    with pytest.raises(ValueError, match="f.txt: expected a directory of images"):
        read_inputs(tmp_path / "f.txt", pre)
    with pytest.raises(ValueError, match="a CSV was given, but the run was not trained on a CSV"):
        (tmp_path / "c.csv").write_text("a\n1\n")
        read_inputs(tmp_path / "c.csv", pre)
    with pytest.raises(ValueError, match="images given, but the model was trained on inputs of shape"):
        _png(tmp_path / "i.png", np.zeros((4, 4), np.uint8))
        read_inputs(tmp_path / "i.png", pre)
    np.savez(tmp_path / "n.npz", x=np.full((2, 1, 40), np.nan))
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        read_inputs(tmp_path / "n.npz", pre)
