"""Multi-layer perceptron backbone: flatten -> [Linear, BatchNorm, ReLU] x depth -> Linear(feat_dim)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._common import check_feat_dim, check_in_shape


class MLP(nn.Module):
    """Features ``f = W_out h + b_out`` of the last hidden layer ``h`` (no activation after it)."""

    def __init__(self, in_shape, feat_dim: int, hidden: int = 256, depth: int = 2):
        super().__init__()
        self.in_shape = check_in_shape(in_shape, None, "mlp")
        self.feat_dim = check_feat_dim(feat_dim, "mlp")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(self.in_shape)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Linear(width, feat_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
