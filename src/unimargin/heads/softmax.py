"""softmax head: linear layer + cross-entropy (SPEC §2.1)."""

from __future__ import annotations

from torch import Tensor

from .base import HeadOutput, LinearHead, cross_entropy_mean
from .registry import CE_FAMILY, register_head


@register_head('softmax', recommended=CE_FAMILY)
class SoftmaxHead(LinearHead):
    """z = W f + b (b optional), loss = CE(z, y), scores S = z (SPEC §2.1).

    Hyper-parameters: ``bias=True``. No learned threshold.
    """


    def __init__(self, num_classes: int, feat_dim: int, bias: bool = True):
        super().__init__(num_classes, feat_dim, bias=bias)
        self.reset_parameters()

    def _loss(self, features: Tensor, labels: Tensor) -> HeadOutput:
        if features.shape[0] == 0:
            return self._zero_output(features, ("ce",))
        logits = self._raw_scores(features)
        ce = cross_entropy_mean(logits, labels)
        return HeadOutput(ce, logits, {"ce": ce.detach()})
