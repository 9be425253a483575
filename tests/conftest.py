"""Shared pytest configuration: small, deterministic, single-threaded by default."""

import os

import pytest
import torch

# Two cores are shared by the test process and the processes some tests spawn.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
