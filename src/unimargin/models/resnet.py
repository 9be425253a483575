"""ResNet-18, CIFAR variant (He et al. 2016): 3x3 stride-1 stem, no max-pool.

Four stages of two BasicBlocks (64, 128, 256, 512 channels; stride 2 from stage 2), global
average pooling and Linear(512, feat_dim) with no activation after it.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_feat_dim, check_in_shape


class BasicBlock(nn.Module):
    """out = ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)); 1x1-conv shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 feature extractor for (C, H, W) inputs (C = 1 or 3, H, W >= 8 sensible)."""

    def __init__(self, in_shape, feat_dim: int, width: int = 64, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.in_shape = check_in_shape(in_shape, 3, "resnet18", min_size=1)
        self.feat_dim = check_feat_dim(feat_dim, "resnet18")
        self.stem = nn.Sequential(
            nn.Conv2d(self.in_shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))))
