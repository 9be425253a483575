"""CIFAR-10/100 python-pickle directories written by the tests in the real format."""

import pickle

import numpy as np
import pytest

from unimargin.data import load_dataset


def _dump(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _batch(rng, n, k, label_key=b"labels"):
    return {b"batch_label": b"x", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, k, n).tolist(), b"filenames": [b"f"] * n}


def make_cifar10(root, n=4, protocol=2):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    _dump(root / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}, protocol)
    batches = [_batch(rng, n, 10) for _ in range(6)]
    for i in range(5):
        _dump(root / f"data_batch_{i + 1}", batches[i], protocol)
    _dump(root / "test_batch", batches[5], protocol)
    return batches


def make_cifar100(root, n=6):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    _dump(root / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                          b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    out = []
    for name in ("train", "test"):
        d = _batch(rng, n, 100, b"fine_labels")
        d[b"coarse_labels"] = rng.integers(0, 20, n).tolist()
        _dump(root / name, d)
        out.append(d)
    return out


def _pixel(data_row, c, h, w):
    """Reference: CIFAR rows are 1024 R, then 1024 G, then 1024 B values, each row-major 32x32."""
    return data_row[c * 1024 + h * 32 + w] / 255.0


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_layout_and_labels(tmp_path, protocol):
    batches = make_cifar10(tmp_path / "cifar-10-batches-py", protocol=protocol)
    s = load_dataset("cifar10", data_dir=tmp_path)  # parent directory also accepted
    assert s.x_train.shape == (20, 3, 32, 32) and s.x_test.shape == (4, 3, 32, 32)
    assert s.classes == [f"class{i}" for i in range(10)]
    train_rows = np.concatenate([b[b"data"] for b in batches[:5]])
    for n, c, h, w in [(0, 0, 0, 0), (3, 1, 5, 31), (19, 2, 31, 7), (7, 2, 16, 16)]:
        assert s.x_train[n, c, h, w].item() == pytest.approx(_pixel(train_rows[n], c, h, w))
    assert s.y_train.tolist() == sum((b[b"labels"] for b in batches[:5]), [])
    assert s.y_test.tolist() == batches[5][b"labels"]


@pytest.mark.parametrize("label_type,k", [("fine", 100), ("coarse", 20)])
def test_cifar100(tmp_path, label_type, k):
    train, test = make_cifar100(tmp_path)
    s = load_dataset("cifar100", data_dir=tmp_path, label_type=label_type)
    assert s.num_classes == k and s.x_train.shape == (6, 3, 32, 32)
    assert s.y_test.tolist() == test[f"{label_type}_labels".encode()]
    assert s.x_test[2, 1, 3, 4].item() == pytest.approx(_pixel(test[b"data"][2], 1, 3, 4))


def test_missing_dir_and_files(tmp_path):
    with pytest.raises(ValueError, match="cifar10: data_dir is required"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="cifar100: data_dir .*absent does not exist"):
        load_dataset("cifar100", data_dir=tmp_path / "absent")
    make_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(ValueError, match="CIFAR file not found: .*data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_corrupt_pickle(tmp_path):
    make_cifar10(tmp_path)
    f = tmp_path / "test_batch"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(ValueError, match="test_batch: not a readable CIFAR pickle"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_labels_outside_class_list(tmp_path):
    batches = make_cifar10(tmp_path)
    batches[0][b"labels"][1] = 10
    _dump(tmp_path / "data_batch_1", batches[0])
    with pytest.raises(ValueError, match=r"data_batch_1: labels outside 0..9"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_count_mismatch_and_bad_shape(tmp_path):
    batches = make_cifar10(tmp_path)
    batches[1][b"labels"] = batches[1][b"labels"][:-1]
    _dump(tmp_path / "data_batch_2", batches[1])
    with pytest.raises(ValueError, match="data_batch_2: 4 images but 3 labels"):
        load_dataset("cifar10", data_dir=tmp_path)
    batches = make_cifar10(tmp_path)
    batches[2][b"data"] = batches[2][b"data"][:, :3000]
    _dump(tmp_path / "data_batch_3", batches[2])
    with pytest.raises(ValueError, match=r"data_batch_3: 'data' must be uint8 of shape \(N, 3072\)"):
        load_dataset("cifar10", data_dir=tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    make_cifar10(tmp_path)
    _dump(tmp_path / "batches.meta", {b"label_names": _Evil()})
    with pytest.raises(ValueError, match="batches.meta: not a readable CIFAR pickle.*refusing to load global (__builtin__|builtins).print"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_open_set(tmp_path):
    make_cifar10(tmp_path, n=30)
    s = load_dataset("cifar10", data_dir=tmp_path, unknown_classes=["class0", "class5"])
    assert "class0" not in s.classes and s.num_classes == 8 and s.unknown_class_names == ["class0", "class5"]
    full = load_dataset("cifar10", data_dir=tmp_path)
    held = (full.y_test == 0) | (full.y_test == 5)
    assert len(s.x_unknown) == int(held.sum()) and len(s.x_train) == int(((full.y_train != 0) & (full.y_train != 5)).sum())
