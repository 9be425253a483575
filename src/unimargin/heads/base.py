"""The Head contract shared by every head family (DESIGN.md, "Public API contract").

A head owns the last layer of a classifier (class weights ``weight`` in ``nn.Linear``
layout, optional ``bias``) and its loss. ``forward(features, labels)`` returns a
:class:`HeadOutput`; ``scores`` gives the class metrics S of SPEC §1; ``predict`` applies
SPEC §2.9 (closed-set argmax, optional rejection below a threshold).

Conventions common to all heads (documented in docs/heads/*.md):

- Input validation (:meth:`Head.check_features`, :meth:`Head.check_labels`): features must
  be a floating tensor of shape (B, feat_dim) with finite values, labels an integer tensor
  of shape (B,) with values in [0, num_classes). Violations raise TypeError (wrong type or
  dtype) or ValueError (wrong shape, size or value) naming the argument.
- The loss maths runs in the dtype of the head's parameters (float32 by default, float64
  after ``head.double()``) with autocast disabled, so bf16 backbones do not degrade it.
- Empty batch (B = 0): the loss is an explicit zero that is still connected to every
  parameter (``0 * sum(p.sum())``), so ``backward()`` and DDP gradient hooks work; buffers
  are left unchanged. Under torch.distributed in training mode the heads with collectives
  (lmdl, center) still take part in them so the other processes do not hang.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class HeadOutput(NamedTuple):
    """What :meth:`Head.forward` returns.

    loss:   scalar tensor to call ``backward()`` on.
    logits: (B, K) tensor argmax predicts from (no training margin applied).
    terms:  named, detached scalar parts of the loss (e.g. ``ce``, ``compact``).
    """

    loss: Tensor
    logits: Tensor
    terms: dict[str, Tensor]


def check_real(name: str, value, *, low=None, high=None, low_open=False, high_open=False):
    """Validate a real-valued hyper-parameter; return it as float.

    Raises ValueError naming the hyper-parameter and the admissible interval.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"hyper-parameter {name!r} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"hyper-parameter {name!r} must be finite, got {value!r}")
    lo_bad = low is not None and (value <= low if low_open else value < low)
    hi_bad = high is not None and (value >= high if high_open else value > high)
    if lo_bad or hi_bad:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"hyper-parameter {name!r} must be in {interval}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"hyper-parameter {name!r} must be True or False, got {value!r}")
    return value


def cosine_matrix(features: Tensor, weight: Tensor) -> Tensor:
    """cos θ_k = ŵ_kᵀ f̂ with f̂ = f/max(‖f‖, 1e-12) (SPEC §1)."""
    return F.linear(F.normalize(features, dim=1, eps=1e-12), F.normalize(weight, dim=1, eps=1e-12))


class Head(nn.Module):
    """Base class of every head. Subclasses implement :meth:`_loss` and :meth:`scores`.

    Attributes: ``name``, ``num_classes`` (K), ``feat_dim`` (d), ``weight`` (K×d
    Parameter), ``bias`` (None, (K,) or () Parameter).
    """

    name: str = "head"

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        for arg, value, minimum in (("num_classes", num_classes, 2), ("feat_dim", feat_dim, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
            if value < minimum:
                raise ValueError(f"{arg} must be >= {minimum}, got {value}")
        self.num_classes = int(num_classes)
        self.feat_dim = int(feat_dim)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.feat_dim))

    # ------------------------------------------------------------------ parameters
    def reset_weight(self) -> None:
        """Kaiming-uniform init, exactly like ``nn.Linear`` (a = √5)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def reset_linear_bias(self) -> None:
        """``nn.Linear`` bias init: U(−1/√d, 1/√d)."""
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.feat_dim)
            nn.init.uniform_(self.bias, -bound, bound)

    def no_decay_parameters(self) -> list[str]:
        """Names (relative to the head) of the parameters weight decay must skip."""
        return []

    def linear_decision(self) -> tuple[Tensor, Tensor] | None:
        """(W, b_eff) with closed-set decision argmax_k (W f + b_eff)_k, or None."""
        return None

    @property
    def threshold(self) -> Tensor | None:
        """Learned unified threshold in score units (None: the head has none)."""
        return None

    @property
    def softmax_scores(self) -> bool:
        """True when S are the logits of a softmax trained by cross-entropy, so the energy
        rejection score logsumexp_k S is defined (SPEC §2.9 "CE heads"). Default: the heads
        without a learned unified threshold; the sigmoid heads (bce-u, bce-d) have one and
        no softmax. A plugin head overrides this when the default is wrong for it."""
        return self.threshold is None

    # ------------------------------------------------------------------ validation
    #: Check the *values* of inputs (finite features, labels in range). These checks read
    #: a value back to the host, which stalls a GPU; the engine validates the first batch
    #: of every epoch and sets this False for the rest (like torchmetrics' validate_args).
    #: Shape and dtype checks (no synchronisation) always run.
    validate: bool = True

    def check_features(self, features, arg: str = "features") -> None:
        if not isinstance(features, Tensor):
            raise TypeError(f"{arg} must be a torch.Tensor, got {type(features).__name__}")
        if features.is_meta or self.weight.is_meta:
            raise ValueError(f"{arg} or the head's weights are meta-device tensors (shapes "
                             f"without data); materialise them (to_empty() + load weights) first")
        if not features.is_floating_point():
            raise TypeError(f"{arg} must be a floating-point tensor, got dtype {features.dtype}")
        if features.dim() != 2:
            raise ValueError(
                f"{arg} must have shape (batch, feat_dim={self.feat_dim}), got {features.dim()}-d "
                f"tensor of shape {tuple(features.shape)}"
            )
        if features.shape[1] != self.feat_dim:
            raise ValueError(
                f"{arg} has width {features.shape[1]} but the head expects feat_dim={self.feat_dim}"
            )
        if features.numel() and self.validate:
            # min/max propagate NaN and expose ±Inf; much cheaper than isfinite().all()
            lo, hi = torch.aminmax(features.detach())
            if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
                raise ValueError(f"{arg} contains NaN or Inf values")

    def check_labels(self, labels, batch_size: int) -> None:
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"labels must be an integer tensor (e.g. torch.long), got dtype {labels.dtype}")
        if labels.dim() != 1:
            raise ValueError(f"labels must be 1-d of shape (batch,), got shape {tuple(labels.shape)}")
        if labels.shape[0] != batch_size:
            raise ValueError(
                f"features and labels have different batch sizes: {batch_size} vs {labels.shape[0]}"
            )
        if labels.numel() and self.validate:
            lo, hi = (int(v) for v in torch.aminmax(labels))
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"labels must be in [0, num_classes={self.num_classes}), found label {bad}"
                )

    def _prepare(self, features: Tensor) -> Tensor:
        """Validate and cast features to the parameters' dtype (float32 loss maths)."""
        self.check_features(features)
        weight = self.weight
        if features.dtype is weight.dtype and features.device == weight.device:
            return features  # what .to() returns, without its per-step call
        return features.to(dtype=weight.dtype, device=weight.device)

    # ------------------------------------------------------------------ API
    def forward(self, features: Tensor, labels: Tensor) -> HeadOutput:
        features = self._prepare(features)
        self.check_labels(labels, features.shape[0])
        device = features.device
        if labels.dtype is not torch.long or labels.device != device:
            labels = labels.to(device=device, dtype=torch.long)
        if torch.is_autocast_enabled(device.type):
            with torch.autocast(device_type=device.type, enabled=False):
                return self._loss(features, labels)
        return self._loss(features, labels)

    def _loss(self, features: Tensor, labels: Tensor) -> HeadOutput:  # pragma: no cover
        raise NotImplementedError

    def _raw_scores(self, features: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def scores(self, features: Tensor) -> Tensor:
        """Class metrics S (N×K) of SPEC §1 (differentiable; no training margin)."""
        features = self._prepare(features)
        if torch.is_autocast_enabled(features.device.type):
            with torch.autocast(device_type=features.device.type, enabled=False):
                return self._raw_scores(features)
        return self._raw_scores(features)

    def scores_unchecked(self, features: Tensor) -> Tensor:
        """:meth:`scores` without the input validation and dtype cast: the bare score
        formula, traceable by torch.export / ONNX (the finiteness check synchronises on
        the data). The caller guarantees finite (N, feat_dim) features of the head's dtype
        (unimargin.deploy.export's inference graph)."""
        return self._raw_scores(features)

    @torch.no_grad()
    def predict(self, features: Tensor, threshold=None) -> Tensor:
        """SPEC §2.9: argmax_k S; with a threshold t (default: the head's learned
        ``threshold``, if any) samples whose max score is <= t get label −1."""
        s = self.scores(features)
        best, pred = s.max(dim=1) if s.shape[0] else (s.new_empty(0), s.new_empty(0, dtype=torch.long))
        t = self.threshold if threshold is None else threshold
        if t is not None:
            t = torch.as_tensor(t, dtype=s.dtype, device=s.device)
            pred = torch.where(best > t, pred, torch.full_like(pred, -1))
        return pred

    def _zero_output(self, features: Tensor, term_names: tuple[str, ...]) -> HeadOutput:
        """Empty-batch result: a zero loss connected to every parameter."""
        loss = sum((p.sum() for p in self.parameters()), features.new_zeros(())) * 0.0
        logits = features.new_zeros((0, self.num_classes))
        zero = features.new_zeros(())
        return HeadOutput(loss, logits, {k: zero.clone() for k in term_names})

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}"


class LinearHead(Head):
    """A head whose scores are the affine logits z = W f + b (b optional; SPEC §2.1).

    Shared by softmax, center and lmdl: same parameters, same scores, and a linear
    closed-set decision, so ``linear_decision`` gives SPEC §3.6 centroid margins.
    """

    def __init__(self, num_classes: int, feat_dim: int, bias: bool = True):
        super().__init__(num_classes, feat_dim)
        self.bias = nn.Parameter(torch.empty(self.num_classes)) if check_bool("bias", bias) else None

    def reset_parameters(self) -> None:
        self.reset_weight()
        self.reset_linear_bias()

    def _raw_scores(self, features: Tensor) -> Tensor:
        return F.linear(features, self.weight, self.bias)

    def linear_decision(self):
        b = self.bias if self.bias is not None else self.weight.new_zeros(self.num_classes)
        return self.weight, b


def cross_entropy_mean(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE over the local batch; 0 (still in the graph) for an empty batch."""
    if labels.shape[0] == 0:  # reduction="mean" would give 0/0 = NaN
        return F.cross_entropy(logits, labels, reduction="sum")
    return F.cross_entropy(logits, labels)
