"""Fashion-MNIST from IDX files: small files written by the tests + the real files when installed."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from unimargin.data import load_dataset
from unimargin.data.fashion_mnist import CLASSES, DEFAULT_DIR
from unimargin.data.idx import read_idx, write_idx


def _write_set(root: Path, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for stem, arr in arrays.items():
        write_idx(root / (stem + (".gz" if gz else "")), arr)
    return arrays


def _manual_idx_bytes(arr: np.ndarray) -> bytes:
    """Independent IDX encoder (header by hand) to check write_idx/read_idx against."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gz", [True, False])
def test_loads_small_idx_files(tmp_path, gz):
    arrays = _write_set(tmp_path, gz=gz)
    s = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert s.x_train.shape == (12, 1, 28, 28) and s.x_test.shape == (5, 1, 28, 28)
    assert s.classes == CLASSES and len(CLASSES) == 10 and s.classes[0] == "T-shirt/top" and s.classes[9] == "Ankle boot"
    expected = arrays["train-images-idx3-ubyte"].astype(np.float32) / 255
    assert np.array_equal(s.x_train[:, 0].numpy(), expected)
    assert s.x_train.dtype == torch.float32 and 0 <= s.x_train.min() and s.x_train.max() <= 1
    assert np.array_equal(s.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_read_idx_matches_hand_encoded_bytes(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_manual_idx_bytes(arr)))
    (tmp_path / "a").write_bytes(_manual_idx_bytes(arr))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr) and np.array_equal(read_idx(tmp_path / "a"), arr)
    wide = np.array([[1, -2], [300000, 4]], dtype=np.int32)
    write_idx(tmp_path / "w", wide)
    assert np.array_equal(read_idx(tmp_path / "w"), wide)


def test_truncated_image_file(tmp_path):
    _write_set(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: payload is .* \(file truncated\)"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_truncated_gzip(tmp_path):
    _write_set(tmp_path)
    f = tmp_path / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_bad_magic(tmp_path):
    _write_set(tmp_path, gz=False)
    f = tmp_path / "train-labels-idx1-ubyte"
    f.write_bytes(b"\x12\x34" + f.read_bytes()[2:])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: not an IDX file"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_wrong_number_of_dimensions(tmp_path):
    _write_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((12, 2), np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz: expected an IDX file with 1 dim"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_wrong_image_size(tmp_path):
    _write_set(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((12, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: expected 28x28"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_count_mismatch(tmp_path):
    _write_set(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="has 5 images but .*t10k-labels-idx1-ubyte.gz has 4 labels"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_label_out_of_range(tmp_path):
    _write_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(12, 10, np.uint8))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: label 10 outside 0..9"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(ValueError, match="data_dir .*nowhere does not exist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    _write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\[.gz\] not found"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_open_set_holds_out_named_classes(tmp_path):
    _write_set(tmp_path, n_train=200, n_test=100)
    s = load_dataset("fashion-mnist", data_dir=tmp_path, unknown_classes=["Bag", "Ankle boot"])
    assert s.classes == CLASSES[:8] and s.unknown_class_names == ["Bag", "Ankle boot"]
    labels = read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz")
    assert len(s.x_unknown) == int((labels >= 8).sum()) and s.y_train.max() <= 7


@pytest.mark.skipif(
    not (DEFAULT_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"real Fashion-MNIST not installed in {DEFAULT_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_files():
    s = load_dataset("fashion-mnist")
    assert s.x_train.shape == (60000, 1, 28, 28) and s.x_test.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(s.y_train), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(s.y_test), torch.full((10,), 1000))
    assert s.x_train.min() == 0 and s.x_train.max() == 1
    assert 0.25 < s.x_train.mean() < 0.32  # published pixel mean 0.286


def _gz_idx(path, dims, payload: bytes):
    """A gzip IDX with a hand-written header that may disagree with its payload."""
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(header + payload, compresslevel=9))
    return path


def _peak_bytes(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            fn()
        return tracemalloc.get_traced_memory()[1], str(info.value)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dims,reason", [
    ((1_000_000, 1000, 1000), "above the limit of"),  # 1e12 bytes > max_bytes
    ((1000, 1000, 1000), "more than a gzip file of"),  # 1e9 bytes: under the limit, beyond deflate's ratio
])
def test_gzip_declaring_a_huge_size_is_refused_from_its_header(tmp_path, dims, reason):
    """issue 11 item 13: a small gzip that expands hugely was decompressed whole before its size check."""
    f = _gz_idx(tmp_path / "huge.gz", dims, bytes(10_000_000))
    peak, msg = _peak_bytes(lambda: read_idx(f))
    assert f"huge.gz: the header declares {dims}" in msg and reason in msg and "refusing" in msg
    assert peak < 2_000_000  # nothing was decompressed (the payload is 10 MB)


def test_gzip_whose_payload_exceeds_the_header_stops_at_the_first_extra_byte(tmp_path):
    f = _gz_idx(tmp_path / "long.gz", (10, 28, 28), bytes(40_000_000))  # header: 7840 bytes; payload: 40 MB
    peak, msg = _peak_bytes(lambda: read_idx(f))
    assert "long.gz: payload is longer than the header (10, 28, 28)" in msg and "trailing data" in msg
    assert peak < 5_000_000  # streamed: far below the 40 MB the whole payload needs


def test_gzip_with_short_payload_and_max_bytes(tmp_path):
    f = _gz_idx(tmp_path / "short.gz", (10, 28, 28), bytes(7000))
    with pytest.raises(ValueError, match=r"short.gz: payload is 7000 bytes but the header .* needs 7840 \(file truncated\)"):
        read_idx(f)
    ok = _gz_idx(tmp_path / "ok.gz", (10, 28, 28), bytes(range(256)) * 30 + bytes(160))
    assert read_idx(ok).shape == (10, 28, 28)
    with pytest.raises(ValueError, match=r"ok.gz: the header declares .* 7840 bytes, above the limit of 7000 bytes"):
        read_idx(ok, max_bytes=7000)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [True, False])
def test_multibyte_types_round_trip_big_endian(tmp_path, dtype, gz):
    arr = (np.arange(24).reshape(2, 3, 4) * 1000 - 7000).astype(dtype)
    path = tmp_path / ("m.gz" if gz else "m")
    write_idx(path, arr)
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    assert raw[16:16 + arr.itemsize] == arr.astype(np.dtype(dtype).newbyteorder(">")).tobytes()[:arr.itemsize]
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, arr)
