"""MNIST-1D: generated locally by the mnist1d package, deterministic, cached, offline."""

import random
import socket

import numpy as np
import pytest
import torch

from unimargin.data import load_dataset
from unimargin.data import mnist1d as m1d


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One generation shared by the module (generation takes a few seconds)."""
    path = tmp_path_factory.mktemp("cache")
    real_socket = socket.socket

    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d generation tried to open a socket")

    socket.socket = no_network
    try:
        splits = load_dataset("mnist1d", cache_dir=path)
    finally:
        socket.socket = real_socket
    return path, splits


def test_shapes_classes_and_dtypes(cache):
    _, s = cache
    assert s.x_train.shape == (4000, 1, 40) and s.x_test.shape == (1000, 1, 40)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert s.classes == [str(i) for i in range(10)]
    assert set(s.y_train.unique().tolist()) == set(range(10)) == set(s.y_test.unique().tolist())


def test_equals_the_package_generator_with_default_args(cache):
    _, s = cache
    from mnist1d.data import get_dataset_args, make_dataset

    ref = make_dataset(get_dataset_args())  # independent call to the package
    assert np.array_equal(s.x_train[:, 0].numpy(), ref["x"].astype(np.float32))
    assert np.array_equal(s.x_test[:, 0].numpy(), ref["x_test"].astype(np.float32))
    assert np.array_equal(s.y_train.numpy(), ref["y"]) and np.array_equal(s.y_test.numpy(), ref["y_test"])


def test_cache_hit_does_not_call_the_generator(cache, monkeypatch):
    path, s = cache
    assert (path / "mnist1d_seed42_v1.npz").is_file()

    def boom(seed):
        raise AssertionError("generator called despite a cache")

    monkeypatch.setattr(m1d, "_generate", boom)
    again = load_dataset("mnist1d", cache_dir=path)
    assert torch.equal(again.x_train, s.x_train) and torch.equal(again.y_test, s.y_test)


def test_env_var_selects_cache_dir(cache, monkeypatch):
    path, s = cache
    monkeypatch.setenv("UNIMARGIN_CACHE", str(path))
    monkeypatch.setattr(m1d, "_generate", lambda seed: pytest.fail("generator called"))
    assert torch.equal(load_dataset("mnist1d").x_train, s.x_train)


def test_corrupt_cache_is_regenerated(cache, tmp_path, monkeypatch):
    _, s = cache
    (tmp_path / "mnist1d_seed42_v1.npz").write_bytes(b"not a zip")
    calls = []
    stored = {"x": s.x_train[:, 0].numpy(), "y": s.y_train.numpy(), "x_test": s.x_test[:, 0].numpy(), "y_test": s.y_test.numpy()}
    monkeypatch.setattr(m1d, "_generate", lambda seed: calls.append(seed) or stored)
    with pytest.warns(UserWarning, match="unreadable MNIST-1D cache"):
        again = load_dataset("mnist1d", cache_dir=tmp_path)
    assert calls == [42] and torch.equal(again.x_train, s.x_train)
    with np.load(tmp_path / "mnist1d_seed42_v1.npz") as f:  # rewritten, now valid
        assert np.array_equal(f["y_test"], s.y_test.numpy())


def test_generation_leaves_global_rngs_alone(monkeypatch, tmp_path):
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    fake = {"x": np.zeros((4000, 40)), "y": np.zeros(4000, int), "x_test": np.zeros((1000, 40)), "y_test": np.zeros(1000, int)}

    def fake_make_dataset(args):
        np.random.seed(args.seed)
        random.seed(args.seed)
        return fake

    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "make_dataset", fake_make_dataset)
    m1d._generate(7)
    assert np.random.rand() == expected_np and random.random() == expected_py


def test_unwritable_cache_dir_still_loads(cache, tmp_path, monkeypatch):
    _, s = cache
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    stored = {"x": s.x_train[:, 0].numpy(), "y": s.y_train.numpy(), "x_test": s.x_test[:, 0].numpy(), "y_test": s.y_test.numpy()}
    monkeypatch.setattr(m1d, "_generate", lambda seed: stored)
    with pytest.warns(UserWarning, match="could not write MNIST-1D cache"):
        again = load_dataset("mnist1d", cache_dir=blocker / "sub")
    assert torch.equal(again.x_test, s.x_test)
