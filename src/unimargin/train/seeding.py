"""Seeding and RNG state capture/restore (torch, CUDA, numpy, python).

Data order is *not* drawn from these global generators: :func:`epoch_generator` derives a
fresh generator from (seed, epoch, stream), so the permutation of epoch e is a pure
function of the seed and e. A run resumed at epoch k therefore sees exactly the batches the
uninterrupted run saw, whatever happened before the kill.
"""

from __future__ import annotations

import random

import numpy as np
import torch

# Distinct streams so data order and augmentation never share random numbers.
STREAM_ORDER = 0
STREAM_AUGMENT = 1

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads nearby seeds apart


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed that is a deterministic function of ``seed`` and ``parts``."""
    h = (int(seed) * _MIX + 1) & (2**64 - 1)
    for p in parts:
        h ^= (int(p) + 0x632BE59BD9B4E019 + (h << 6) + (h >> 2)) & (2**64 - 1)
        h = (h * _MIX) & (2**64 - 1)
    return h & (2**63 - 1)


def epoch_generator(seed: int, epoch: int, stream: int = STREAM_ORDER, rank: int = 0
                    ) -> torch.Generator:
    """CPU generator for (seed, epoch, stream, rank): data order uses rank 0 everywhere."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, epoch, stream, rank))
    return g


def capture_rng_state() -> dict:
    """All global RNG states, as tensors and plain Python values (loadable with
    ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
