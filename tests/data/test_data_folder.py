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


def _png16_rgb(path, arr):
    """Independent 16-bit RGB PNG encoder (Pillow cannot write one): IHDR bit depth 16, colour type 2."""
    import struct
    import zlib

    h, w, _ = arr.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


def test_16bit_grayscale_is_scaled_by_its_bit_depth_not_clipped(tmp_path):
    """issue 11 item 9: convert("L") clipped every 16-bit value above 255 to white."""
    rng = np.random.default_rng(0)
    written = {}
    for c in ("a", "b"):
        for i in range(4):
            arr = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
            _png(tmp_path / c / f"{i}.png", arr)
            written[(c, i)] = arr
    s = load_dataset("folder", data_dir=tmp_path, test_fraction=0.25)
    pool = torch.cat([s.x_train, s.x_test])[:, 0].numpy().astype(np.float64)
    assert s.x_train.shape[1] == 1 and pool.max() < 1.0 and 0.3 < pool.mean() < 0.7  # clipped would be ~1.0
    for arr in written.values():  # every file appears exactly, as value / 65535
        ref = arr.astype(np.float64) / 65535
        assert np.abs(pool - ref).reshape(len(pool), -1).max(1).min() < 1e-6


def test_16bit_rgb_png_keeps_its_scale(tmp_path):
    arr = np.zeros((4, 4, 3), np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 30000, 65535, 1000
    for c in ("a", "b"):
        for i in range(2):
            _png16_rgb(tmp_path / c / f"{i}.png", arr)
    s = load_dataset("folder", data_dir=tmp_path, test_fraction=0.5)
    px = s.x_train[0, :, 0, 0].numpy()
    assert s.x_train.shape[1] == 3 and np.allclose(px, arr[0, 0] / 65535, atol=1 / 255)


def test_mixed_8_and_16_bit_sizes_and_channels(tmp_path):
    _png(tmp_path / "a" / "0.png", np.full((10, 12), 128, np.uint8))
    _png(tmp_path / "a" / "1.png", np.full((20, 16), 32896, np.uint16))  # 32896 / 65535 == 128 / 255
    _png(tmp_path / "b" / "0.png", np.full((8, 8, 3), 255, np.uint8))
    _png(tmp_path / "b" / "1.png", np.full((9, 7), 65535, np.uint16))
    s = load_dataset("folder", data_dir=tmp_path, image_size="6,5", channels=3, test_fraction=0.5)
    assert s.x_train.shape[1:] == (3, 6, 5) and s.x_test.shape[1:] == (3, 6, 5)
    x, y = torch.cat([s.x_train, s.x_test]), torch.cat([s.y_train, s.y_test])
    assert torch.allclose(x[y == 0], torch.full_like(x[y == 0], 128 / 255), atol=1e-5)
    assert torch.allclose(x[y == 1], torch.ones_like(x[y == 1]), atol=1e-6)
    assert s.preprocessing["image_size"] == [6, 5] and s.preprocessing["channels"] == 3
    assert s.preprocessing["dataset"] == "folder" and s.preprocessing["classes"] == ["a", "b"]


@pytest.mark.parametrize("text,size", [(8, (8, 8)), ("8", (8, 8)), ("6,5", (6, 5)), ("6x5", (6, 5)), ([6, 5], (6, 5)),
                                       ((4, 3), (4, 3)), (None, None)])
def test_parse_image_size(text, size):
    from unimargin.data.folder import parse_image_size

    assert parse_image_size(text) == size


@pytest.mark.parametrize("bad", ["a", "0", "3,0", "1,2,3", -4, 2.5, True, [1.5, 2]])
def test_parse_image_size_errors(bad):
    from unimargin.data.folder import parse_image_size

    with pytest.raises(ValueError, match="image_size must be H or H,W"):
        parse_image_size(bad)


def test_train_test_layout_refuses_test_fraction(tmp_path):
    make_tree(tmp_path / "train", per_class=2)
    make_tree(tmp_path / "test", per_class=1)
    with pytest.raises(ValueError, match="has train/ and test/ sub-directories; test_fraction applies only without"):
        load_dataset("folder", data_dir=tmp_path, test_fraction=0.3)


def test_too_small_folder_names_the_folder(tmp_path):
    make_tree(tmp_path, per_class=1)
    with pytest.raises(ValueError, match=r"folder .*: 3 samples are too few to split off a test set"):
        load_dataset("folder", data_dir=tmp_path)


def test_32bit_and_out_of_range_float_images_are_refused(tmp_path):
    make_tree(tmp_path, per_class=2, rgb=False)
    Image.fromarray(np.full((6, 7), 3.5, np.float32), "F").save(tmp_path / "cat" / "f.tif")
    with pytest.raises(ValueError, match=r"image .*f.tif is a floating-point image with values outside \[0, 1\]"):
        load_dataset("folder", data_dir=tmp_path)
