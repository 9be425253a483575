"""softmax head: linear layer + cross-entropy (SPEC §2.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Head, HeadOutput, check_bool, cross_entropy_mean


class SoftmaxHead(Head):
    """z = W f + b (b optional), loss = CE(z, y), scores S = z (SPEC §2.1).

    Hyper-parameters: ``bias=True``. No learned threshold.
    """

    name = "softmax"

    def __init__(self, num_classes: int, feat_dim: int, bias: bool = True):
        super().__init__(num_classes, feat_dim)
        self.bias = nn.Parameter(torch.empty(self.num_classes)) if check_bool("bias", bias) else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_weight()
        self.reset_linear_bias()

    def _raw_scores(self, features: Tensor) -> Tensor:
        return F.linear(features, self.weight, self.bias)

    def linear_decision(self):
        b = self.bias if self.bias is not None else self.weight.new_zeros(self.num_classes)
        return self.weight, b

    def _loss(self, features: Tensor, labels: Tensor) -> HeadOutput:
        if features.shape[0] == 0:
            return self._zero_output(features, ("ce",))
        logits = self._raw_scores(features)
        ce = cross_entropy_mean(logits, labels)
        return HeadOutput(ce, logits, {"ce": ce.detach()})
