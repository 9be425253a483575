"""Atomic checkpoint I/O, clear errors for bad files, RNG capture/restore, data order."""

import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from unimargin.io import atomic_write_bytes
from unimargin.train.checkpoint import load_checkpoint, save_checkpoint
from unimargin.train.seeding import (capture_rng_state, epoch_generator, restore_rng_state,
                                     seed_everything)


def _state(v=1.0):
    return {"model": {"w": torch.full((3,), v)}, "epoch": 1, "config": {}, "history": []}


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(_state(2.0), path)
    got = load_checkpoint(path)
    assert torch.equal(got["model"]["w"], torch.full((3,), 2.0)) and got["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    path = tmp_path / "last.pt"
    save_checkpoint(_state(), path)
    data = path.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trunc.pt.*corrupt"):
        load_checkpoint(trunc)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="other.pt.*not a unimargin checkpoint"):
        load_checkpoint(other)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="text.pt"):
        load_checkpoint(text)


_SAVER = r"""
import sys, time, torch
from unimargin.train.checkpoint import save_checkpoint
path = sys.argv[1]
save_checkpoint({"model": {"w": torch.full((1000,), 1.0)}, "epoch": 1, "config": {}, "history": []}, path)
print("first", flush=True)
# sleep between writing the temp file and the rename: the test kills the process there
save_checkpoint({"model": {"w": torch.full((1000,), 2.0)}, "epoch": 2, "config": {}, "history": []}, path,
                before_replace=lambda tmp: time.sleep(60))
print("second", flush=True)
"""


def test_sigkill_during_save_leaves_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        # Wait for the second save's temp file while last.pt (the first save) exists.
        while time.time() < deadline:
            temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            if path.exists() and temps:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the saver never reached the second save")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9
    got = load_checkpoint(path)  # complete and loadable: the first save
    assert got["epoch"] == 1 and torch.equal(got["model"]["w"], torch.full((1000,), 1.0))
    # The next save cleans up the stale temp file.
    save_checkpoint(_state(3.0), path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_write_bytes_replaces_content(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_bytes(b"one", path)
    atomic_write_bytes(b"two", path)
    assert path.read_bytes() == b"two"


def test_rng_state_round_trip_through_checkpoint(tmp_path):
    seed_everything(7)
    torch.rand(3), np.random.rand(2), random.random()
    save_checkpoint({**_state(), "rng": capture_rng_state()}, tmp_path / "c.pt")
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    seed_everything(123)
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_data_order_is_a_function_of_seed_and_epoch():
    perm = lambda s, e: torch.randperm(100, generator=epoch_generator(s, e))  # noqa: E731
    torch.manual_seed(0)
    a = perm(1, 3)
    torch.rand(10)  # global RNG use must not matter
    assert torch.equal(a, perm(1, 3))
    assert not torch.equal(a, perm(1, 4)) and not torch.equal(a, perm(2, 3))


def test_a_flipped_byte_inside_a_weight_tensor_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    weights = torch.arange(4096, dtype=torch.float32)
    save_checkpoint({"model": {"w": weights}, "epoch": 1, "config": {}, "history": []}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], weights)
    data = bytearray(path.read_bytes())
    # torch stores the tensor's bytes verbatim: find them and flip 16 bytes in the middle
    offset = bytes(data).index(weights[1000:1004].numpy().tobytes())
    for i in range(offset, offset + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    # the zip and pickle layers do not notice; torch.load alone gives wrong numbers
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], weights)
    with pytest.raises(ValueError, match=r"c.pt.*corrupt.*SHA-256"):
        load_checkpoint(path)


def test_payload_digest_sees_every_value_and_dtype():
    from unimargin.train.checkpoint import payload_digest

    base = {"model": {"w": torch.zeros(3)}, "epoch": 1, "history": [{"a": 1.0}]}
    d = payload_digest(base)
    assert d == payload_digest({"history": [{"a": 1.0}], "epoch": 1, "model": {"w": torch.zeros(3)}})
    for changed in ({**base, "epoch": 2}, {**base, "history": [{"a": 1.5}]},
                    {**base, "model": {"w": torch.zeros(3, dtype=torch.float64)}},
                    {**base, "model": {"w": torch.zeros(1, 3)}},
                    {**base, "model": {"w": torch.tensor([0.0, 0.0, -0.0])}}):
        assert payload_digest(changed) != d
    assert payload_digest({**base, "sha256": "x"}) == d   # the digest entry itself is excluded


def test_version_1_checkpoints_without_a_digest_still_load(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "unimargin-checkpoint", "version": 1, "model": {}, "epoch": 1,
                "config": {}, "history": []}, path)
    assert load_checkpoint(path)["epoch"] == 1
    torch.save({"format": "unimargin-checkpoint", "version": 2, "model": {}, "epoch": 1,
                "config": {}, "history": []}, path)
    with pytest.raises(ValueError, match="missing.*sha256"):
        load_checkpoint(path)


class _RunsCode:
    """Unpickling this object would call os.system (a code-execution payload)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "unimargin-checkpoint", "version": 2, "model": {}, "epoch": 1,
                "config": {}, "history": [], "payload": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match="evil.pt.*corrupt or not a unimargin checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
