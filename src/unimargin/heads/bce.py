"""BCE heads with a unified bias (bce-u) or per-class biases (bce-d) [BCE], [UniFace]
(SPEC §2.7, §2.8)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Head, HeadOutput, check_bool, check_real, cosine_matrix
from .registry import CAREFUL, register_head

_DEFAULT_SCALE = 16.0
_DEFAULT_MARGIN = 0.0
_SOFTPLUS_THRESHOLD = 20.0  # F.softplus's default: linear beyond it, in the formula and its fast path


def bce_loss(z: Tensor, labels: Tensor, neg_weight: float, neg_mask: Tensor | None = None,
             z_pos: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """mean_i [softplus(−z⁺_i) + λ Σ_{k≠y_i} keep_ik · softplus(z_ik)] (SPEC §2.7), with
    z⁺_i = ``z_pos`` (B×1; default z_{i,y_i}: the positive logit, e.g. with a margin).

    One softplus pass over the "signed" logits (−z⁺ at y_i, z elsewhere): the positive and
    negative terms are the same function of one B×K tensor, so the loss is one sum (plus
    one gather for λ ≠ 1), with no mask tensor and no cancellation. softplus is evaluated
    stably by PyTorch (linear beyond |z| > 20), so losses and gradients stay finite for
    |z| ≥ 1e4. Returns (loss, pos, neg) with pos/neg the per-sample means of the two parts
    (neg unweighted; neg = total − pos, a diagnostic).
    """
    index = labels[:, None]
    if z_pos is None:
        z_pos = z.gather(1, index)
    # softplus(−z⁺) at y_i, softplus(z_ik) elsewhere
    terms = F.softplus(z.scatter(1, index, -z_pos), threshold=_SOFTPLUS_THRESHOLD)
    if neg_mask is not None:
        terms = terms * neg_mask.scatter(1, index, 1.0)       # the positive term is never dropped
    return _signed_sums(terms, index, neg_weight)


# B·K from which BCEStep runs: below it the Python Function's fixed cost (~35 µs) exceeds the
# B×K passes it saves (benchmarks/heads_speed.py --bce-crossover; both paths are bit-identical,
# so the threshold changes only the time)
BCE_STEP_MIN_ELEMENTS = 1 << 16


class BCEStep(torch.autograd.Function):
    """Fast path of :func:`bce_loss` for logits z = a − b (SPEC §2.7), tested equal to it.

    ``BCEStep.apply(a, bias, labels, shift, neg_weight) -> (loss, logits, pos, neg)`` runs
    the formula's forward ops (z = a − b, z⁺ = z_{i,y_i} − ``shift``, one softplus pass over
    the signed logits) and writes the backward by hand:

        ∂L/∂signed = softplus′(signed) · ∂L/∂terms,   ∂L/∂z = ∂L/∂signed with −(·) at y_i,
        ∂L/∂a = ∂L/∂z,   ∂L/∂b = −Σ ∂L/∂z (over everything broadcast).

    That is the chain rule autograd applies to the formula, in the same operations and
    order, so the gradients are bit-identical to it, but as 3 passes over B×K instead of
    autograd's ~9 (the scatter, gather and broadcast nodes each materialise a B×K tensor).
    The backward of the backward (``create_graph=True``) re-runs the formula under autograd,
    so second derivatives are the formula's own. ``pos``/``neg`` are diagnostics without
    gradient; ``logits`` may be used downstream (its gradient is added).
    """

    @staticmethod
    def forward(ctx, a, bias, labels, shift: float, neg_weight: float):
        logits = a - bias
        index = labels[:, None]
        z_pos = logits.gather(1, index)
        if shift:
            z_pos = z_pos - shift
        signed = logits.scatter(1, index, -z_pos)
        loss, pos, neg = _signed_sums(F.softplus(signed, threshold=_SOFTPLUS_THRESHOLD), index, neg_weight)
        ctx.save_for_backward(a, bias, labels, signed)
        ctx.shift, ctx.neg_weight = shift, neg_weight
        ctx.mark_non_differentiable(pos, neg)
        ctx.set_materialize_grads(False)
        return loss, logits, pos, neg

    @staticmethod
    def backward(ctx, g_loss, g_logits, _g_pos, _g_neg):
        a, bias, labels, signed = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the formula itself
            return (*_formula_grads(a, bias, labels, ctx.shift, ctx.neg_weight, g_loss, g_logits),
                    None, None, None)
        index = labels[:, None]
        grad = None
        if g_loss is not None:
            scale = g_loss / max(signed.shape[0], 1)
            lam = ctx.neg_weight
            if lam == 1.0:
                g_terms = scale.expand_as(signed)
            else:  # autograd's sum of the two paths: λ·g everywhere, + (1 − λ)·g at y_i
                g_terms = (lam * scale).expand_as(signed).clone()
                g_terms.scatter_add_(1, index, ((1.0 - lam) * scale).expand(index.shape))
            grad = torch.ops.aten.softplus_backward(g_terms, signed, 1.0, _SOFTPLUS_THRESHOLD)
            grad.scatter_(1, index, -grad.gather(1, index))  # z⁺ enters the signed logits negated
        if g_logits is not None:
            grad = g_logits if grad is None else grad + g_logits
        if grad is None:
            return None, None, None, None, None
        g_bias = -(grad.sum() if bias.dim() == 0 else grad.sum(0)) if ctx.needs_input_grad[1] else None
        return grad, g_bias, None, None, None


def _signed_sums(terms: Tensor, index: Tensor, neg_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, pos, neg) of :func:`bce_loss` from its B×K softplus terms."""
    n = max(terms.shape[0], 1)
    pos = terms.gather(1, index).sum()
    total = terms.sum()
    loss = total if neg_weight == 1.0 else neg_weight * total + (1.0 - neg_weight) * pos  # = pos + λ neg
    return loss / n, pos / n, (total - pos) / n


def _formula_grads(a, bias, labels, shift, neg_weight, g_loss, g_logits):
    """Gradients of (loss, logits) w.r.t. (a, bias) through :func:`bce_loss` under autograd
    (graph kept: the second derivatives of :class:`BCEStep`)."""
    with torch.enable_grad():
        logits = a - bias
        z_pos = logits.gather(1, labels[:, None])
        if shift:
            z_pos = z_pos - shift
        loss = bce_loss(logits, labels, neg_weight, None, z_pos)[0]
        outs = [(o, g) for o, g in ((loss, g_loss), (logits, g_logits)) if g is not None]
        wrt = [t for t in (a, bias) if t.requires_grad]
        grads = iter(torch.autograd.grad([o for o, _ in outs], wrt, [g for _, g in outs],
                                         create_graph=True, allow_unused=True))
        return tuple(next(grads) if t.requires_grad else None for t in (a, bias))


class _BCEHead(Head):
    """Shared implementation; subclasses fix the bias shape and the score definition."""

    unified: bool = True

    def __init__(self, num_classes: int, feat_dim: int, normalize: bool = False,
                 scale: float = _DEFAULT_SCALE, margin: float = _DEFAULT_MARGIN,
                 neg_weight: float = 1.0, neg_rate: float = 1.0, bias_init: float | None = None):
        super().__init__(num_classes, feat_dim)
        self.normalize = check_bool("normalize", normalize)
        self.scale = check_real("scale", scale, low=0.0, low_open=True)
        self.margin = check_real("margin", margin, low=0.0)
        if not self.normalize and (self.scale != _DEFAULT_SCALE or self.margin != _DEFAULT_MARGIN):
            raise ValueError(
                "hyper-parameters 'scale' and 'margin' only apply when normalize=True "
                f"(got scale={scale}, margin={margin} with normalize=False)"
            )
        self.neg_weight = check_real("neg_weight", neg_weight, low=0.0)
        self.neg_rate = check_real("neg_rate", neg_rate, low=0.0, high=1.0, low_open=True)
        if bias_init is None:
            # SPEC §2.7: 0 unnormalized; log(10·K·r) normalized ([UniFace])
            bias_init = math.log(10.0 * self.num_classes * self.neg_rate) if self.normalize else 0.0
        self.bias_init = check_real("bias_init", bias_init)
        shape = () if self.unified else (self.num_classes,)
        self.bias = nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_weight()
        nn.init.constant_(self.bias, self.bias_init)

    def no_decay_parameters(self) -> list[str]:
        return ["bias"]  # SPEC §2.7: the (unified) threshold is not weight-decayed

    def metric(self, features: Tensor) -> Tensor:
        """a_k = w_kᵀ f, or s·cos θ_k when normalized (SPEC §2.7)."""
        if self.normalize:
            return self.scale * cosine_matrix(features, self.weight)
        return F.linear(features, self.weight)

    def linear_decision(self):
        if self.normalize:
            return None
        b_eff = torch.zeros_like(self.weight[:, 0]) if self.unified else -self.bias
        return self.weight, b_eff

    def _loss(self, features: Tensor, labels: Tensor) -> HeadOutput:
        if features.shape[0] == 0:
            return self._zero_output(features, ("pos", "neg"))
        a = self.metric(features)
        # the training margin on the positive logit only; logits stay margin-free (prediction)
        shift = self.scale * self.margin if self.normalize and self.margin else 0.0
        sampled = self.training and self.neg_rate < 1.0
        if not sampled and a.numel() >= BCE_STEP_MIN_ELEMENTS:
            loss, logits, pos, neg = BCEStep.apply(a, self.bias, labels, shift, self.neg_weight)
            return HeadOutput(loss, logits, {"pos": pos, "neg": neg})
        logits = a - self.bias
        z_pos = logits.gather(1, labels[:, None])
        if shift:
            z_pos = z_pos - shift
        neg_mask = (torch.rand_like(logits) < self.neg_rate).to(logits.dtype) if sampled else None
        loss, pos, neg = bce_loss(logits, labels, self.neg_weight, neg_mask, z_pos)
        return HeadOutput(loss, logits, {"pos": pos.detach(), "neg": neg.detach()})

    def extra_repr(self) -> str:
        extra = f", scale={self.scale}, margin={self.margin}" if self.normalize else ""
        return f"{super().extra_repr()}, normalize={self.normalize}{extra}, neg_rate={self.neg_rate}"


@register_head('bce-u', recommended=CAREFUL)
class BCEUnifiedHead(_BCEHead):
    """bce-u (SPEC §2.7): z_k = a_k − b with one scalar bias b (``bias`` shape ()).

    Scores S = a (bias-free); learned threshold = b: class k is accepted iff a_k > b.
    """

    unified = True

    def _raw_scores(self, features: Tensor) -> Tensor:
        return self.metric(features)

    @property
    def threshold(self) -> Tensor:
        return self.bias.detach()


@register_head('bce-d', recommended=CAREFUL)
class BCEDiverseHead(_BCEHead):
    """bce-d (SPEC §2.8): z_k = a_k − b_k with one bias per class (``bias`` shape (K,)).

    Scores S = z; the learned unified threshold is 0.
    """

    unified = False

    def _raw_scores(self, features: Tensor) -> Tensor:
        return self.metric(features) - self.bias

    @property
    def threshold(self) -> Tensor:
        return self.bias.detach().new_zeros(())
