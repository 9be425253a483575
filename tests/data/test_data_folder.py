"""Image folders of PNG files written by the tests."""

import numpy as np
import pytest
import torch
from PIL import Image

from unimargin.data import load_dataset
from unimargin.data.folder import ImageFolderDataset, scan_folder


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_tree(root, classes=("cat", "dog", "eel"), per_class=5, size=(6, 7), rgb=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for c in classes:
        for i in range(per_class):
            arr = rng.integers(0, 256, size + ((3,) if rgb else ()), dtype=np.uint8)
            _png(root / c / f"{i}.png", arr)
            arrays[root / c / f"{i}.png"] = arr
    (root / classes[0] / "notes.txt").write_text("ignored")
    return arrays


def _reference(arrays, x, y, classes):
    """Every loaded image equals (pixel / 255) of exactly one written file of its class."""
    for img, label in zip(x, y):
        hwc = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        matches = [p for p, a in arrays.items() if np.array_equal(a.reshape(hwc.shape), hwc)]
        assert len(matches) == 1 and matches[0].parent.name == classes[int(label)]


def test_flat_tree_rgb_stratified_split(tmp_path):
    arrays = make_tree(tmp_path)
    s = load_dataset("folder", data_dir=tmp_path)
    assert s.classes == ["cat", "dog", "eel"] and s.x_train.shape[1:] == (3, 6, 7)
    assert len(s.x_train) == 12 and len(s.x_test) == 3
    assert torch.equal(torch.bincount(s.y_test), torch.ones(3, dtype=torch.long))
    _reference(arrays, s.x_train, s.y_train, s.classes)
    _reference(arrays, s.x_test, s.y_test, s.classes)


def test_grayscale_auto_and_forced(tmp_path):
    arrays = make_tree(tmp_path, rgb=False)
    s = load_dataset("folder", data_dir=tmp_path)
    assert s.x_train.shape[1] == 1
    _reference(arrays, s.x_train, s.y_train, s.classes)
    rgb = load_dataset("folder", data_dir=tmp_path, channels=3)
    assert rgb.x_train.shape[1] == 3 and torch.equal(rgb.x_train[:, 0], rgb.x_train[:, 2])


def test_train_test_subdirs(tmp_path):
    train = make_tree(tmp_path / "train", per_class=3, seed=1)
    test = make_tree(tmp_path / "test", classes=("cat", "eel"), per_class=2, seed=2)
    s = load_dataset("folder", data_dir=tmp_path)
    assert s.classes == ["cat", "dog", "eel"] and len(s.x_train) == 9 and len(s.x_test) == 4
    assert sorted(s.y_test.tolist()) == [0, 0, 2, 2]
    _reference(train, s.x_train, s.y_train, s.classes)
    _reference(test, s.x_test, s.y_test, s.classes)


def test_resize_modes(tmp_path):
    _png(tmp_path / "a" / "0.png", np.tile(np.arange(20, dtype=np.uint8)[None, :] * 10, (10, 1)))
    _png(tmp_path / "a" / "1.png", np.full((30, 12), 50, np.uint8))
    _png(tmp_path / "b" / "0.png", np.full((8, 8), 200, np.uint8))
    _png(tmp_path / "b" / "1.png", np.full((9, 5), 100, np.uint8))
    with pytest.raises(ValueError, match="images differ in size.*pass image_size"):
        load_dataset("folder", data_dir=tmp_path)
    s = load_dataset("folder", data_dir=tmp_path, image_size=8, test_fraction=0.5)
    assert s.x_train.shape[1:] == (1, 8, 8)
    # center crop of the horizontal ramp keeps the middle: mean pixel ~ middle of the ramp
    ramp = torch.cat([s.x_train, s.x_test])[torch.cat([s.y_train, s.y_test]) == 0]
    ramp = ramp[ramp.std(dim=(1, 2, 3)) > 0][0, 0]
    assert (ramp[:, 1:] >= ramp[:, :-1]).all()  # still increasing left to right
    assert ramp.mean().item() == pytest.approx(95 / 255, abs=0.05)
    st = load_dataset("folder", data_dir=tmp_path, image_size=(4, 6), resize="stretch", test_fraction=0.5)
    assert st.x_train.shape[1:] == (1, 4, 6)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="folder: data_dir is required"):
        load_dataset("folder")
    with pytest.raises(ValueError, match="folder: data_dir .*missing does not exist"):
        load_dataset("folder", data_dir=tmp_path / "missing")
    make_tree(tmp_path)
    (tmp_path / "fox").mkdir()
    with pytest.raises(ValueError, match="class folder .*fox contains no images"):
        load_dataset("folder", data_dir=tmp_path)
    (tmp_path / "fox" / "0.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read image .*fox/0.png"):
        load_dataset("folder", data_dir=tmp_path)
    with pytest.raises(ValueError, match="resize must be"):
        load_dataset("folder", data_dir=tmp_path, resize="squash")


def test_test_class_not_in_train(tmp_path):
    make_tree(tmp_path / "train", classes=("a", "b"), per_class=2)
    make_tree(tmp_path / "test", classes=("a", "cat"), per_class=1)
    with pytest.raises(ValueError, match=r"class folders \['cat'\] that are not in the training classes"):
        load_dataset("folder", data_dir=tmp_path)


def test_lazy_dataset_matches_eager(tmp_path):
    make_tree(tmp_path)
    files, labels, classes = scan_folder(tmp_path)
    ds = ImageFolderDataset(files, labels, image_size=None, channels=3)
    eager = load_dataset("folder", data_dir=tmp_path, test_fraction=0.2)
    x0, y0 = ds[0]
    # files[0] is cat/0.png; find it among the eager tensors
    pool = torch.cat([eager.x_train, eager.x_test])
    assert len(ds) == 15 and y0.item() == 0 and (pool == x0).flatten(1).all(1).sum() == 1


def test_folder_open_set(tmp_path):
    make_tree(tmp_path, per_class=6)
    s = load_dataset("folder", data_dir=tmp_path, unknown_classes=["dog"])
    assert s.classes == ["cat", "eel"] and s.unknown_class_names == ["dog"]
    full = load_dataset("folder", data_dir=tmp_path)
    assert torch.equal(s.x_unknown, full.x_test[full.y_test == 1])
    assert torch.cdist(s.x_train.flatten(1), full.x_train[full.y_train == 1].flatten(1)).min() > 0
