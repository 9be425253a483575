"""center head: softmax + center loss [Center] (SPEC §2.5)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import distributed as udist
from .base import HeadOutput, LinearHead, check_real, cross_entropy_mean
from .registry import CE_FAMILY, register_head


def class_sums_and_counts(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class feature sums (K×d, differentiable) and counts (K,) of a batch."""
    sums = features.new_zeros((num_classes, features.shape[1])).index_add(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    return sums, counts


def center_update(centers: Tensor, sums: Tensor, counts: Tensor, center_lr: float) -> Tensor:
    """[Center] rule (SPEC §2.5): Δc_j = Σ_{i: y_i=j}(c_j − f_i)/(1 + n_j); c_j ← c_j − α Δc_j.

    Written with class sums, Σ_i (c_j − f_i) = n_j c_j − Σ_i f_i, so absent classes
    (n_j = 0) are unchanged and the rule needs no loop.
    """
    delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
    return centers - center_lr * delta


@register_head('center', recommended=CE_FAMILY)
class CenterHead(LinearHead):
    """Loss = CE(W f + b, y) + λ_c · ½ · mean_i ‖f_i − c_{y_i}‖² (SPEC §2.5).

    Hyper-parameters: ``center_weight=0.01`` (λ_c ≥ 0), ``center_lr=0.5`` (α ∈ [0, 1]),
    ``bias=True``. ``centers`` (K×d) is a persistent buffer, initialised to zero, updated
    after the loss is computed and only in training mode; no gradient flows into it.

    Distributed: the loss is a local mean (like CE); the centre update uses per-class sums
    and counts all-reduced over processes, so every process applies the same update as a
    single process on the concatenated batch.
    """


    def __init__(self, num_classes: int, feat_dim: int, center_weight: float = 0.01,
                 center_lr: float = 0.5, bias: bool = True):
        super().__init__(num_classes, feat_dim, bias=bias)
        self.center_weight = check_real("center_weight", center_weight, low=0.0)
        self.center_lr = check_real("center_lr", center_lr, low=0.0, high=1.0)
        self.register_buffer("centers", torch.zeros(self.num_classes, self.feat_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.centers.zero_()

    def _loss(self, features: Tensor, labels: Tensor) -> HeadOutput:
        sync = self.training and udist.is_distributed()
        if features.shape[0] == 0 and not sync:
            return self._zero_output(features, ("ce", "center"))
        logits = self._raw_scores(features)
        ce = cross_entropy_mean(logits, labels)
        diff = features - self.centers[labels]
        center = 0.5 * (diff * diff).sum(1).sum() / max(features.shape[0], 1)
        loss = ce + self.center_weight * center
        if self.training:
            with torch.no_grad():
                sums, counts = class_sums_and_counts(features.detach(), labels, self.num_classes)
                # one collective for both statistics
                packed = udist.all_reduce_sum(torch.cat([sums, counts[:, None]], dim=1))
                sums, counts = packed[:, :-1], packed[:, -1]
                self.centers.copy_(center_update(self.centers, sums, counts, self.center_lr))
        return HeadOutput(loss, logits, {"ce": ce.detach(), "center": center.detach()})
