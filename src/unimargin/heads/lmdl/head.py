"""The lmdl head (SPEC §2.6) and the one dispatch between its implementations (:func:`step_path`)."""

from __future__ import annotations

import contextlib
import threading
import warnings

import torch
from torch import Tensor

from unimargin import distributed as udist

from ..base import HeadOutput, LinearHead, check_real, cross_entropy_mean
from ..registry import CAREFUL, register_head
from unimargin._native import lmdl_kernel, lmdl_op

from .fused import lmdl_fused_step, lmdl_present_step
from .terms import AGGREGATIONS, CPU_UNIT_ROUNDOFF, _identity, lmdl_terms

# Fused single-process step for K <= FUSED_MAX_K; THE formula (terms.py) otherwise and
# whenever the batch is split over processes.
FUSED_MAX_K = 64
# Max aggregation on the CPU with the compiled kernel: the present-class step above these K
# (and wherever the small all-classes kernel does not apply). Measured (B = 256, d = 128/512,
# 1 thread; docs/heads/lmdl.md): with the C++ operator (lmdl_op) the present step is as fast
# or faster at every K, K = 10 included (1.44x vs 1.49x plain at d = 128), so there is no
# threshold; as the Python autograd.Function over ctypes (no C++ compiler) the all-classes
# kernel is faster up to K ≈ 24-32.
PRESENT_MIN_K = 0
PRESENT_MIN_K_PYTHON = 32


_local = threading.local()  # autograd_path() nesting depth, per thread (like torch.no_grad)


def step_path(num_classes: int, distributed: bool, aggregation: str = "max", tensors: tuple | None = None) -> str:
    """The dispatch rule, one of ``"present"``, ``"fused"``, ``"terms"``:

    - ``"terms"``: THE formula (:func:`lmdl_terms`) under autograd, when the batch is split
      over processes, inside :func:`autograd_path`, or when nothing below applies;
    - ``"present"``: the present-class step (max aggregation, any K, CPU with the kernel
      built) for K > PRESENT_MIN_K when its C++ operator is built (``lmdl_op.usable``), for
      K > PRESENT_MIN_K_PYTHON as the Python :class:`LMDLPresentStep`
      (``lmdl_kernel.present_usable``), and at any K where the all-classes kernel does not apply;
    - ``"fused"``: otherwise for K <= FUSED_MAX_K, the all-classes step (:class:`LMDLFusedStep`), run by
      the small compiled kernel when it applies (``lmdl_kernel.usable``), else its PyTorch
      implementation (GPU, bf16, no compiler).

    ``tensors`` = (features, weight, bias, centroids) of the step; None: no kernel applies."""
    return _dispatch(num_classes, distributed, aggregation, tensors)[0]


def _dispatch(num_classes: int, distributed: bool, aggregation: str, tensors: tuple | None) -> tuple[str, bool]:
    """(:func:`step_path`, whether the present step runs as the C++ operator)."""
    if distributed or getattr(_local, "depth", 0):
        return "terms", False
    if aggregation == "max" and tensors is not None:
        op = lmdl_op.usable(*tensors)
        if op and num_classes > PRESENT_MIN_K:  # the common case first: one check
            return "present", True
        if op or lmdl_kernel.present_usable(*tensors):
            crossover = PRESENT_MIN_K if op else PRESENT_MIN_K_PYTHON
            if num_classes > crossover or not (num_classes <= FUSED_MAX_K and lmdl_kernel.usable(*tensors)):
                return "present", op
    return ("fused" if num_classes <= FUSED_MAX_K else "terms"), False


@contextlib.contextmanager
def autograd_path():
    """Inside this block (this thread) :class:`LMDLHead` runs THE formula, :func:`lmdl_terms`,
    under autograd at every K: same values, slower, and it supports second-order
    gradients (``torch.autograd.grad(..., create_graph=True)``), which the fused step's
    hand-derived backward refuses with a RuntimeError."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


@register_head('lmdl', recommended=CAREFUL)
class LMDLHead(LinearHead):
    """Loss = CE(W f + b, y) + λ (α L_compact + β L_margin + γ L_reg) (SPEC §2.6).

    Hyper-parameters (DESIGN.md): ``delta_v=0.5``, ``delta_d=1.5``, ``compact_weight=1``
    (α), ``margin_weight=1`` (β), ``reg_weight=0.001`` (γ), ``momentum=0.99`` (μ ∈ [0,1)),
    ``disc_weight=1`` (λ), ``aggregation="max"|"mean"``, ``bias=True``. δ_d ≤ δ_v is
    allowed (ablations) but warns: the guaranteed feature margin δ_d − δ_v is then ≤ 0.

    Buffers ``centroids`` (K×d, init 0) and ``seen`` (K, bool) are persistent and updated
    only in training mode (M_c ← m_c for the classes of the batch). In eval mode the loss
    uses the stored centroids of seen classes but the buffers never change.

    Dispatch (:func:`step_path`): on one process the whole step (logits, CE and the three
    terms) is one autograd node with a hand-derived backward: the present-class step (max
    aggregation, CPU kernel, any K; the C++ operator of :mod:`unimargin._native.lmdl_op`,
    else :class:`LMDLPresentStep`) or :class:`LMDLFusedStep` (K ≤ ``FUSED_MAX_K``);
    otherwise THE formula, :func:`lmdl_terms`, under autograd.

    Distributed (training mode, torch.distributed initialised): class sums, counts and
    hinge sums are all-reduced with a differentiable all-reduce, so the discriminative
    terms and the buffers are identical on every process and equal to one process on the
    concatenated batch; CE stays a local mean, so with equal per-process batch sizes the
    DDP-averaged gradient equals the single-process gradient. A process whose local batch
    is empty still joins the collectives. Eval-mode forward does no collectives (local
    batch statistics), so it may be called on one process only.
    """


    def __init__(self, num_classes: int, feat_dim: int, delta_v: float = 0.5, delta_d: float = 1.5,
                 compact_weight: float = 1.0, margin_weight: float = 1.0, reg_weight: float = 0.001,
                 momentum: float = 0.99, disc_weight: float = 1.0, aggregation: str = "max",
                 bias: bool = True):
        super().__init__(num_classes, feat_dim, bias=bias)
        self.delta_v = check_real("delta_v", delta_v, low=0.0)
        self.delta_d = check_real("delta_d", delta_d, low=0.0)
        if self.delta_d <= self.delta_v:
            warnings.warn(
                f"lmdl: delta_d={self.delta_d} <= delta_v={self.delta_v}; the feature-space margin "
                "delta_d - delta_v guaranteed by SPEC §2.6 is not positive",
                UserWarning,
                stacklevel=2,
            )
        self.compact_weight = check_real("compact_weight", compact_weight, low=0.0)
        self.margin_weight = check_real("margin_weight", margin_weight, low=0.0)
        self.reg_weight = check_real("reg_weight", reg_weight, low=0.0)
        self.momentum = check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.disc_weight = check_real("disc_weight", disc_weight, low=0.0)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"hyper-parameter 'aggregation' must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
        self.aggregation = aggregation
        self.register_buffer("centroids", torch.zeros(self.num_classes, self.feat_dim))
        self.register_buffer("seen", torch.zeros(self.num_classes, dtype=torch.bool))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.centroids.zero_()
        self.seen.zero_()

    def _loss(self, features: Tensor, labels: Tensor) -> HeadOutput:
        names = ("ce", "compact", "margin", "reg")
        sync = self.training and udist.is_distributed()
        if features.shape[0] == 0 and not sync:
            return self._zero_output(features, names)
        weight, bias, centroids = self.weight, self.bias, self.centroids
        path, op = _dispatch(self.num_classes, sync, self.aggregation, (features, weight, bias, centroids))
        if path == "present":  # one autograd node over the present classes, any K
            lam = self.disc_weight
            if op:  # the C++ operator directly: its checks were just made (one step = one Python call)
                loss, logits, *terms, present, new_centroids = lmdl_op.present_step(
                    features, weight, bias, labels, centroids, self.seen, self.delta_v, self.delta_d,
                    self.momentum, lam * self.compact_weight, lam * self.margin_weight, lam * self.reg_weight,
                    CPU_UNIT_ROUNDOFF[features.dtype], self.training)
                return HeadOutput(loss, logits, dict(zip(names, terms)))
            loss, terms, present, new_centroids, logits = lmdl_present_step(
                features, weight, bias, labels, centroids, self.seen, delta_v=self.delta_v,
                delta_d=self.delta_d, momentum=self.momentum,
                compact_coef=lam * self.compact_weight, margin_coef=lam * self.margin_weight,
                reg_coef=lam * self.reg_weight, update_buffers=self.training)  # the kernel writes M, seen
            return HeadOutput(loss, logits, dict(zip(names, terms.unbind())))
        if path == "fused":  # one autograd node for the whole step (the K ≲ 64 cost is per-op overhead)
            lam = self.disc_weight
            loss, terms, new_centroids, present_mask, logits = lmdl_fused_step(
                features, self.weight, self.bias, labels, self.centroids, self.seen, delta_v=self.delta_v,
                delta_d=self.delta_d, momentum=self.momentum, aggregation=self.aggregation,
                compact_coef=lam * self.compact_weight, margin_coef=lam * self.margin_weight,
                reg_coef=lam * self.reg_weight)
            if self.training:
                with torch.no_grad():  # absent classes' rows of new_centroids are the old M_c
                    self.centroids.copy_(new_centroids)
                    self.seen.logical_or_(present_mask)
            return HeadOutput(loss, logits, dict(zip(names, terms.unbind())))
        logits = self._raw_scores(features)
        ce = cross_entropy_mean(logits, labels)
        reduce = (lambda t: udist.all_reduce_sum(t, differentiable=True)) if sync else _identity
        hp = dict(delta_v=self.delta_v, delta_d=self.delta_d, momentum=self.momentum,
                  aggregation=self.aggregation, reduce=reduce)
        args = (features, labels, self.weight, self.bias, self.centroids, self.seen)
        terms = lmdl_terms(*args, **hp, logits=logits)
        # one stack + dot instead of five scalar autograd nodes (λα, λβ, λγ folded)
        coef = logits.new_tensor([1.0, self.disc_weight * self.compact_weight,
                                  self.disc_weight * self.margin_weight, self.disc_weight * self.reg_weight])
        loss = torch.stack([ce, terms.compact, terms.margin, terms.reg]).dot(coef)
        if self.training:
            with torch.no_grad():
                new = terms.new_centroids.to(self.centroids.dtype)
                self.centroids.index_copy_(0, terms.present, new)
                self.seen.index_fill_(0, terms.present, True)
        parts = {"ce": ce, "compact": terms.compact, "margin": terms.margin, "reg": terms.reg}
        return HeadOutput(loss, logits, {k: v.detach() for k, v in parts.items()})

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, delta_v={self.delta_v}, delta_d={self.delta_d}, "
                f"momentum={self.momentum}, aggregation={self.aggregation!r}")
