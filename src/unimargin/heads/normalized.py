"""Normalized heads: normface, cosface, arcface (SPEC §2.2–2.4).

All three compare cos θ_k = ŵ_kᵀ f̂ scaled by s; they differ only in the training margin
applied to the positive class. Scores (and the returned logits) are s·cos θ without any
margin, i.e. what prediction uses. No bias, no learned threshold, ``linear_decision()`` is
None (the decision is not linear in f).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Head, HeadOutput, check_real, cosine_matrix, cross_entropy_mean
from .registry import CAREFUL, CE_FAMILY, register_head

_COS_CLAMP = 1e-7  # SPEC §2.4: θ = acos(clamp(cos θ, −1+1e-7, 1−1e-7))


def arcface_positive_cos(cos_y: Tensor, margin: float) -> Tensor:
    """cos(θ_y + m) with the monotone fallback cos θ_y − m·sin m where θ_y + m > π (SPEC §2.4)."""
    theta = torch.acos(cos_y.clamp(-1.0 + _COS_CLAMP, 1.0 - _COS_CLAMP))
    shifted = torch.cos(theta + margin)
    fallback = cos_y - margin * math.sin(margin)
    return torch.where(theta + margin > math.pi, fallback, shifted)


class _NormalizedHead(Head):
    def __init__(self, num_classes: int, feat_dim: int, scale: float = 16.0):
        super().__init__(num_classes, feat_dim)
        self.scale = check_real("scale", scale, low=0.0, low_open=True)
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_weight()

    def _raw_scores(self, features: Tensor) -> Tensor:
        return self.scale * cosine_matrix(features, self.weight)

    #: the training logit of the true class is s·_positive_cos(cos θ_y); None: no margin (normface)
    _positive_cos = None

    def _loss(self, features: Tensor, labels: Tensor) -> HeadOutput:
        if features.shape[0] == 0:
            return self._zero_output(features, ("ce",))
        cos = cosine_matrix(features, self.weight)
        logits = self.scale * cos  # margin-free: what prediction uses
        train_logits = logits
        if self._positive_cos is not None:  # only the B positive entries change: one gather + scatter
            index = labels[:, None]
            train_logits = logits.scatter(1, index, self.scale * self._positive_cos(cos.gather(1, index)))
        ce = cross_entropy_mean(train_logits, labels)
        return HeadOutput(ce, logits, {"ce": ce.detach()})


@register_head('normface', recommended=CE_FAMILY)
class NormFaceHead(_NormalizedHead):
    """z_k = s·cos θ_k, loss CE (SPEC §2.2). Hyper-parameters: ``scale=16``."""



@register_head('cosface', recommended=CE_FAMILY)
class CosFaceHead(_NormalizedHead):
    """Positive logit s·(cos θ_y − m), loss CE (SPEC §2.3). ``scale=16``, ``margin=0.35``."""


    def __init__(self, num_classes: int, feat_dim: int, scale: float = 16.0, margin: float = 0.35):
        self._margin = check_real("margin", margin, low=0.0)
        super().__init__(num_classes, feat_dim, scale)
        self.margin = self._margin

    def _positive_cos(self, cos_y: Tensor) -> Tensor:
        return cos_y - self.margin


@register_head('arcface', recommended=CAREFUL)
class ArcFaceHead(_NormalizedHead):
    """Positive logit s·cos(θ_y + m) with the SPEC §2.4 fallback, loss CE.

    ``scale=16``, ``margin=0.5`` (radians, must be in [0, π)).
    """


    def __init__(self, num_classes: int, feat_dim: int, scale: float = 16.0, margin: float = 0.5):
        self._margin = check_real("margin", margin, low=0.0, high=math.pi, high_open=True)
        super().__init__(num_classes, feat_dim, scale)
        self.margin = self._margin

    def _positive_cos(self, cos_y: Tensor) -> Tensor:
        return arcface_positive_cos(cos_y, self.margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, margin={self.margin}"
