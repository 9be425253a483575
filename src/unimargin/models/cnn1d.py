"""1-D CNN backbone for MNIST-1D signals (C, L), e.g. (1, 40).

Three conv1d + BN + ReLU layers with two 2x max-pools keep the positional layout, which is
flattened (not pooled away: the digit identity in MNIST-1D depends on where the template
bumps are) into an MLP layer and a final Linear(feat_dim).
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_feat_dim, check_in_shape


class PairMaxPool1d(nn.Module):
    """``nn.MaxPool1d(2)`` as a max over adjacent pairs (a trailing odd element is dropped, as
    there): the same values and the same gradient (each pair's first maximum takes it, as in
    MaxPool1d's kernel), in about 0.7x its forward + backward time on the CPU, where
    MaxPool1d runs as a 2-D pool with index bookkeeping (benchmarks/cnn1d_pool.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = x.shape[-1] // 2
        return x[..., : 2 * pairs].unflatten(-1, (pairs, 2)).max(dim=-1).values


class CNN1D(nn.Module):
    """Features ``f = Linear(ReLU(BN(Linear(flatten(conv stack(x))))))``; no activation after the last Linear."""

    def __init__(self, in_shape, feat_dim: int, width: int = 32, hidden: int = 256):
        super().__init__()
        self.in_shape = check_in_shape(in_shape, 2, "cnn1d", min_size=4)
        self.feat_dim = check_feat_dim(feat_dim, "cnn1d")
        c, length = self.in_shape
        self.body = nn.Sequential(
            nn.Conv1d(c, width, 5, padding=2, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
            nn.Conv1d(width, 2 * width, 5, padding=2, bias=False), nn.BatchNorm1d(2 * width), nn.ReLU(inplace=True),
            PairMaxPool1d(),
            nn.Conv1d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm1d(2 * width), nn.ReLU(inplace=True),
            PairMaxPool1d(),
            nn.Flatten(),
        )
        flat = 2 * width * (length // 4)
        self.fc = nn.Sequential(
            nn.Linear(flat, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, feat_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))
