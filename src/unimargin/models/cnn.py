"""Small 2-D CNN backbone for 28x28 / 32x32 (and 8x8) images with 1 or 3 channels.

Two VGG-style stages (two 3x3 conv + BN + ReLU each, then 2x2 max-pool), a third 3x3 conv,
global average pooling (so any input >= 4x4 works, e.g. 8x8 digits) and Linear(feat_dim).
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_feat_dim, check_in_shape


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CNN(nn.Module):
    """2-D CNN; output ``f = Linear(GAP(conv stack(x)))`` with no activation after the Linear."""

    def __init__(self, in_shape, feat_dim: int, width: int = 32):
        super().__init__()
        self.in_shape = check_in_shape(in_shape, 3, "cnn", min_size=4)
        self.feat_dim = check_feat_dim(feat_dim, "cnn")
        c = self.in_shape[0]
        w1, w2, w3 = width, 2 * width, 4 * width
        self.body = nn.Sequential(
            *_conv_bn_relu(c, w1), *_conv_bn_relu(w1, w1), nn.MaxPool2d(2),
            *_conv_bn_relu(w1, w2), *_conv_bn_relu(w2, w2), nn.MaxPool2d(2),
            *_conv_bn_relu(w2, w3),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(w3, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))
