"""The single-process fast step of lmdl (SPEC §2.6): CE and the three terms of
:mod:`unimargin.heads.lmdl.terms` as one autograd node with a hand-derived backward, run
by the compiled CPU kernel (:mod:`unimargin._native.lmdl_kernel`) where it applies.

Tested equal to :func:`unimargin.heads.lmdl.terms.lmdl_terms` (+ cross-entropy) in float64
on every branch (tests/heads/test_heads_lmdl.py, test_heads_lmdl_kernel.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from unimargin._native import lmdl_kernel, lmdl_op

from .terms import pair_norms, unit_roundoff


class LMDLFusedStep(torch.autograd.Function):
    """CE + λ(α L_compact + β L_margin + γ L_reg) of SPEC §2.6 in ONE autograd node
    (single process, all K classes with masks; the same terms as :func:`~unimargin.heads.lmdl.terms.lmdl_terms`).

    Called through :func:`lmdl_fused_step`. ``apply(features, weight, bias, labels,
    centroids, seen, delta_v, delta_d, momentum, max_aggregation, compact_coef, margin_coef,
    reg_coef, extras)`` returns the two differentiable outputs ``(loss, logits)`` and appends
    ``terms, centroid, present_mask`` (no gradient) to the list ``extras``: fewer outputs,
    less autograd bookkeeping per step. loss = ce + Σ coef · term with
    terms = (ce, L_compact, L_margin, L_reg); centroid (K×d) = m_c for present classes and
    M_c (unchanged) for absent ones, i.e. the new buffer; logits = W f + b.

    On CPU tensors of float32/float64 the forward and backward run in the compiled kernel
    of :mod:`unimargin._native.lmdl_kernel` when it is available (same formulas; the PyTorch
    code below is the reference and the fallback). At small K the step costs per-op overhead, not
    arithmetic, so the forward uses few tensor ops and the backward is derived by hand
    (no autograd graph). With Y the one-hot labels (B×K), A = Y diag(1/n) and
    ω = 1/|C_B| on present classes (0 elsewhere):

    - Z = f Wᵀ + b; CE = mean_i −log softmax(Z)_{i,y_i}; ∂CE/∂Z = (softmax(Z) − Y)/B
    - m̄ = Aᵀ f; the class mean of the logits z̄ = Aᵀ Z equals W m̄_c + b on every present
      row, so the margin's gradient to f, W, b joins the CE's through ∂/∂Z
      (absent rows have weight 0 in every term)
    - m = lerp(sg(M), m̄, κ), κ = present·(1 − μ·seen), so ∂/∂m̄ = κ ∂/∂m
    - compact = Σ_i s_i h_i², h_i = [‖r_i‖ − δ_v]₊, r_i = f_i − m_{y_i}, s = A ω;
      ∂/∂r_i = 2 s_i h_i r_i/‖r_i‖, and ∂/∂m_c = −Σ_{i∈B_c} ∂/∂r_i
    - d_cj = (z̄_cc − z̄_cj)/D_cj, D_cj = max(‖w_c − w_j‖, 1e-12) (torch.cdist);
      ∂d_cj/∂D_cj = −d_cj/D_cj (0 where clamped) and with Q_cj = (∂L/∂D_cj)/D_cj,
      S = Q + Qᵀ: ∇_W = diag(S 1) W − S W
    - max aggregation: min_j's gradient goes to its arg-min (as torch.min's backward)
    - reg = Σ_c ω_c ‖m_c‖, ∂/∂m_c = ω_c m_c/‖m_c‖ (0 at 0, as vector_norm)
    """

    @staticmethod
    def forward(ctx, features, weight, bias, labels, centroids, seen, delta_v, delta_d, momentum,
                max_aggregation, compact_coef, margin_coef, reg_coef, extras):
        ctx.set_materialize_grads(False)
        ctx.hp = (max_aggregation, compact_coef, margin_coef, reg_coef, bias is not None, delta_d)
        if lmdl_kernel.usable(features, weight, bias, centroids):  # same maths, compiled (CPU)
            features, weight, labels = features.contiguous(), weight.contiguous(), labels.long().contiguous()
            loss, terms, centroid, present, logits, work = lmdl_kernel.forward(
                features, weight, bias, labels, centroids, seen, delta_v, delta_d, momentum,
                max_aggregation, compact_coef, margin_coef, reg_coef)
            ctx.save_for_backward(features, weight)
            ctx.kernel = (labels, centroid, work)
            extras.extend((terms, centroid, present))
            return loss, logits
        ctx.kernel = None
        # every line is one or two tensor ops: at K ≲ 64 each op costs more than its arithmetic
        num_classes = weight.shape[0]
        eye, self_inf = _class_constants(num_classes, features.dtype, features.device)
        # K×B layout: W fᵀ is ~3x faster than f Wᵀ at K ≪ B (BLAS shape), and so is every
        # reduction over the classes; the returned logits are the B×K transposed view
        features_t = features.t()
        logits_t = weight.mm(features_t) if bias is None else torch.addmm(bias.unsqueeze(1), weight, features_t)
        onehot_t = eye.index_select(1, labels)                                 # Yᵀ (K×B), no label re-check
        counts = onehot_t.sum(1)
        present = counts.bool()                                                # counts ≥ 0
        mean_op_t = onehot_t / counts.clamp_min(1).unsqueeze(1)                # Aᵀ (absent rows 0)
        class_weight = present.to(features.dtype)
        keep = torch.where(seen, class_weight * (1.0 - momentum), class_weight).unsqueeze(1)  # κ
        class_weight /= class_weight.sum()                                     # ω (B > 0 here)
        mean = mean_op_t.mm(features)                                          # m̄
        if centroids.dtype != features.dtype:
            centroids = centroids.to(features.dtype)
        centroid = torch.lerp(centroids, mean, keep)                           # κ = 0: exactly M

        resid = torch.addmm(features, onehot_t.t(), centroid, alpha=-1.0)           # r_i = f_i − m_{y_i}
        resid_norm = torch.linalg.vector_norm(resid, dim=1)
        hinge = F.softshrink(resid_norm, delta_v)                              # = [‖r‖ − δ_v]₊ for ‖r‖ ≥ 0
        weighted_hinge = hinge * class_weight.matmul(mean_op_t)                # s_i h_i
        compact = hinge.dot(weighted_hinge)

        log_prob_t = logits_t.log_softmax(0)
        ce = torch.dot(log_prob_t.view(-1), onehot_t.view(-1)).mul_(-1.0 / features.shape[0])

        # z̄ = W m̄_c + b (K×d×K, not K×B×K); absent rows (b, not Aᵀ Z = 0) carry weight 0
        zbar = mean.mm(weight.t()) if bias is None else torch.addmm(bias, mean, weight.t())
        numer = zbar.diagonal().unsqueeze(1) - zbar
        # ‖w_c − w_j‖: cdist's expansion ‖a‖² + ‖b‖² − 2aᵀb cancels for near-duplicate
        # weights (SPEC §2.6 "Numerics"); those pairs are recomputed from the differences
        pair_dist = pair_norms(weight)
        inv_dist = pair_dist.clamp_min(1e-12).reciprocal_()
        dist = torch.addcmul(self_inf, numer, inv_dist)                        # d_cj, +inf at j = c
        if max_aggregation:
            nearest_dist, nearest = dist.min(1)
            margin_hinge = (delta_d - nearest_dist).clamp_min_(0.0)
            margin = margin_hinge.dot(class_weight)
        else:  # the +inf self pair gives a zero hinge
            margin_hinge = (delta_d - dist).clamp_min_(0.0)
            nearest = None
            margin = margin_hinge.sum(1).dot(class_weight) / (num_classes - 1)

        centroid_norm = torch.linalg.vector_norm(centroid, dim=1)
        reg = centroid_norm.dot(class_weight)

        terms = torch.stack([ce, compact, margin, reg])
        loss = terms.dot(_loss_coefficients(compact_coef, margin_coef, reg_coef, features.dtype, features.device))

        ctx.save_for_backward(features, weight)
        # intermediates (neither inputs nor outputs) live on ctx: no saved-tensor unpacking cost
        ctx.inter = (onehot_t, mean_op_t, log_prob_t, resid, resid_norm, weighted_hinge, class_weight,
                     centroid, centroid_norm, keep, numer, pair_dist, inv_dist, margin_hinge, nearest)
        extras.extend((terms, centroid, present))
        return loss, logits_t.t()

    @staticmethod
    def backward(ctx, grad_loss, grad_logits):
        # grad mode is on in a backward exactly when create_graph=True: this hand-derived
        # backward records no graph, so say so rather than return silent zero second derivatives
        if torch.is_grad_enabled():
            raise RuntimeError(_NO_DOUBLE_BACKWARD)
        with torch.no_grad():
            return LMDLFusedStep._backward(ctx, grad_loss, grad_logits)

    @staticmethod
    def _backward(ctx, grad_loss, grad_logits):
        features, weight = ctx.saved_tensors
        max_aggregation, compact_coef, margin_coef, reg_coef, has_bias, delta_d = ctx.hp
        if ctx.kernel is not None:
            labels, centroid, work = ctx.kernel
            grads = lmdl_kernel.backward(
                features, weight, has_bias, labels, centroid, work, max_aggregation, delta_d, compact_coef,
                margin_coef, reg_coef, 0.0 if grad_loss is None else float(grad_loss), grad_logits)
            return grads + (None,) * 11
        (onehot_t, mean_op_t, log_prob_t, resid, resid_norm, weighted_hinge, class_weight,
         centroid, centroid_norm, keep, numer, pair_dist, inv_dist, margin_hinge, nearest) = ctx.inter
        num_classes, batch = onehot_t.shape
        if grad_loss is None:  # only the logits are used downstream
            grad_loss = features.new_zeros(())

        # margin, per unit of β: G = −∂L_margin/∂d (≥ 0) on the active hinges. Built as Gᵀ:
        # D (hence 1/D) is symmetric, and Gᵀ is the left operand of the matmul below
        if max_aggregation:
            active = margin_hinge.sign().mul_(class_weight)                    # hinge ≥ 0: sign = active
            grad_dist_t = torch.zeros_like(numer).scatter_(0, nearest.unsqueeze(0), active.unsqueeze(0))
        else:
            grad_dist_t = margin_hinge.t().sign().mul_(class_weight / (num_classes - 1))
        grad_numer_t = grad_dist_t.mul_(inv_dist)                              # −(∂L/∂numer)ᵀ
        # Qᵀ with Q = (∂L/∂D)/D = G·numer/D³ ; the clamp passes no gradient
        pair_coef_t = (grad_numer_t * numer.t()).mul_(inv_dist.masked_fill(pair_dist < 1e-12, 0.0).square_())
        pair_sym = pair_coef_t + pair_coef_t.t()
        pair_sym.diagonal().sub_(pair_sym.sum(1))                              # S − diag(S 1)
        # ∂L/∂z̄ = β(G − diag(G 1)) since numer_cj = z̄_cc − z̄_cj
        grad_numer_t.diagonal().sub_(grad_numer_t.sum(0))
        grad_logits_t = torch.addmm(log_prob_t.exp().sub_(onehot_t), grad_numer_t, mean_op_t,
                                    beta=1.0 / batch, alpha=margin_coef)  # (∂/∂Z)ᵀ

        # compactness (per unit of 2α) and reg (per unit of γ) through m = lerp(M, m̄, κ)
        grad_resid = resid * (weighted_hinge / resid_norm.clamp_min(1e-30))[:, None]
        grad_mean = torch.addmm(centroid * (class_weight / centroid_norm.clamp_min(1e-30))[:, None],
                                onehot_t, grad_resid, beta=reg_coef, alpha=-2.0 * compact_coef).mul_(keep)

        grad_features = torch.addmm(grad_resid, grad_logits_t.t(), weight, beta=2.0 * compact_coef)
        grad_features.addmm_(mean_op_t.t(), grad_mean)
        grad_weight = grad_logits_t.mm(features).addmm_(pair_sym, weight, alpha=-margin_coef)
        grads = [grad_features, grad_weight]
        if has_bias:
            grads.append(grad_logits_t.sum(1))
        torch._foreach_mul_(grads, grad_loss)
        if grad_logits is not None:  # logits used downstream as well: Z = f Wᵀ + b
            grads[0].addmm_(grad_logits, weight)
            grads[1].addmm_(grad_logits.t(), features)
            if has_bias:
                grads[2] += grad_logits.sum(0)
        return (grads[0], grads[1], grads[2] if has_bias else None) + (None,) * 11


class LMDLPresentStep(torch.autograd.Function):
    """CE + λ(α L_compact + β L_margin + γ L_reg) of SPEC §2.6, max aggregation, as ONE
    autograd node over the P classes present in the batch, at any K (single process, CPU,
    compiled kernel built: :func:`unimargin._native.lmdl_kernel.present_usable`).

    ``apply(features, weight, bias, labels, centroids, seen, delta_v, delta_d, momentum,
    compact_coef, margin_coef, reg_coef, update, extras)`` returns ``(loss, logits)`` and appends
    ``terms, present, centroid`` (m_c of the present classes, P×d) to ``extras``; with
    ``update`` the kernel also writes M_c ← m_c, seen_c ← True into the buffers (training).

    The terms are those of :func:`~unimargin.heads.lmdl.terms.lmdl_terms` (the same nearest
    pair rule and rounding bounds; every d_cj that enters the loss from w_c − w_j). The big
    products run in PyTorch's BLAS: Z = f Wᵀ + b, log_softmax(Z), the P×K Gram W_p Wᵀ that
    ranks the candidates (no gradient), and in the backward ∂L/∂f = Σ + (∂L/∂Z) W,
    ∂L/∂W = (∂L/∂Z)ᵀ f + pair rows; everything else (class means, the compactness and reg
    terms, the candidate search and the exact pair distances, their gradients) is one kernel
    pass each (:mod:`unimargin._native.lmdl_kernel`). The margin's gradient is exact from the
    pair (c, j*(c)) only: with g_c = ∂L/∂d_{c j*}, Δ = w_c − w_{j*}, D = max(‖Δ‖, 1e-12):
    ∂/∂m̄_c = g Δ/D, ∂/∂w_c = −∂/∂w_{j*} = g (m̄_c/D − d Δ/(D‖Δ‖)), ∂/∂b_c = −∂/∂b_{j*} = g/D;
    then ∂/∂m̄_c += κ_c ∂/∂m_c (κ = 1 − μ if seen else 1) and ∂/∂f_i += ∂/∂m̄_{y_i}/n.
    So the cost over plain linear + CE is one P×K×d matmul (≈ 1/3 of plain's three B×K×d
    when P ≈ B) and O(B·K + P·K + B·d) passes.
    """

    @staticmethod
    def forward(ctx, features, weight, bias, labels, centroids, seen, delta_v, delta_d, momentum,
                compact_coef, margin_coef, reg_coef, update, extras):
        ctx.set_materialize_grads(False)
        features, weight, labels = features.contiguous(), weight.contiguous(), labels.long().contiguous()
        present, rows = lmdl_kernel.present_classes(labels, weight.shape[0])
        logits = torch.mm(features, weight.t()) if bias is None else torch.addmm(bias, features, weight.t())
        log_prob = torch.log_softmax(logits, 1)
        gram = torch.mm(weight.index_select(0, present), weight.t())  # ranks candidates only
        out, centroid, nearest, work = lmdl_kernel.present_forward(
            features, weight, bias, labels, present, rows, logits, log_prob, gram, centroids, seen, delta_v,
            delta_d, momentum, compact_coef, margin_coef, reg_coef, unit_roundoff(features, weight), update)
        ctx.save_for_backward(features, weight)
        ctx.hp = (bias, delta_v, delta_d, compact_coef, margin_coef, reg_coef)
        ctx.inter = (labels, present, rows, nearest, centroid, work, log_prob)
        extras.extend((out[1:], present, centroid))
        return out[0], logits

    @staticmethod
    def backward(ctx, grad_loss, grad_logits):
        if torch.is_grad_enabled():
            raise RuntimeError(_NO_DOUBLE_BACKWARD)
        with torch.no_grad():
            features, weight = ctx.saved_tensors
            bias, delta_v, delta_d, compact_coef, margin_coef, reg_coef = ctx.hp
            labels, present, rows, nearest, centroid, work, log_prob = ctx.inter
            grad_z = log_prob.exp()
            grad_f, pair_grad, pair_gb, grad_bias = lmdl_kernel.present_backward(
                features, weight, bias, labels, present, rows, nearest, centroid, work, delta_v, delta_d,
                compact_coef, margin_coef, reg_coef, 0.0 if grad_loss is None else float(grad_loss), grad_z)
            if grad_logits is not None:  # logits used downstream as well
                grad_z += grad_logits
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
            grad_f.addmm_(grad_z, weight)
            grad_weight = grad_z.t().mm(features)
            lmdl_kernel.present_scatter(present, nearest, pair_grad, pair_gb, grad_weight, grad_bias)
        return (grad_f, grad_weight, grad_bias) + (None,) * 11


_NO_DOUBLE_BACKWARD = lmdl_kernel.NO_DOUBLE_BACKWARD


class LMDLPresentResult(NamedTuple):
    loss: Tensor            # CE + λ(α L_compact + β L_margin + γ L_reg), differentiable
    terms: Tensor           # (4,) detached: CE, L_compact, L_margin, L_reg
    present: Tensor         # (P,) long: classes present in the batch
    new_centroids: Tensor   # (P, d) detached: m_c of those classes
    logits: Tensor          # (B, K) W f + b, differentiable


def lmdl_present_step(features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, centroids: Tensor,
                      seen: Tensor, *, delta_v: float, delta_d: float, momentum: float, compact_coef: float,
                      margin_coef: float, reg_coef: float, update_buffers: bool = False) -> LMDLPresentResult:
    """One single-process lmdl step, max aggregation, any K (:class:`LMDLPresentStep`); the
    coefficients are λα, λβ, λγ. Needs :func:`unimargin._native.lmdl_kernel.present_usable`
    and a non-empty batch. The buffers are only read unless ``update_buffers`` (training
    mode; contiguous buffers): then the kernel writes M_c ← m_c and seen_c ← True for the
    present classes in the same pass (no index_copy_ / index_fill_ ops)."""
    if features.shape[0] == 0:
        raise ValueError("lmdl_present_step needs a non-empty batch (LMDLHead returns an explicit zero loss)")
    if lmdl_op.usable(features, weight, bias, centroids):  # the same step as one C++ autograd node
        loss, logits, *terms, present, centroid = lmdl_op.present_step(
            features, weight, bias, labels, centroids, seen, delta_v, delta_d, momentum, compact_coef, margin_coef,
            reg_coef, unit_roundoff(features, weight), update_buffers)
        return LMDLPresentResult(loss, torch.stack(terms), present, centroid, logits)
    extras: list = []
    loss, logits = LMDLPresentStep.apply(features, weight, bias, labels, centroids, seen, delta_v, delta_d,
                                         momentum, compact_coef, margin_coef, reg_coef, update_buffers, extras)
    return LMDLPresentResult(loss, *extras, logits)


class LMDLStep(NamedTuple):
    loss: Tensor            # CE + λ(α L_compact + β L_margin + γ L_reg), differentiable
    terms: Tensor           # (4,) detached: CE, L_compact, L_margin, L_reg
    new_centroids: Tensor   # (K, d) detached: m_c for present classes, M_c for absent ones
    present_mask: Tensor    # (K,) bool: classes present in the batch
    logits: Tensor          # (B, K) W f + b, differentiable


def lmdl_fused_step(features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, centroids: Tensor,
                    seen: Tensor, *, delta_v: float, delta_d: float, momentum: float, aggregation: str = "max",
                    compact_coef: float, margin_coef: float, reg_coef: float) -> LMDLStep:
    """One whole single-process lmdl step (SPEC §2.6) as one autograd node
    (:class:`LMDLFusedStep`); the coefficients are λα, λβ, λγ. Labels must be valid
    (``Head.forward`` checks them) and the batch non-empty; the buffers are read, never written."""
    if features.shape[0] == 0:
        raise ValueError("lmdl_fused_step needs a non-empty batch (LMDLHead returns an explicit zero loss)")
    extras: list = []
    loss, logits = LMDLFusedStep.apply(features, weight, bias, labels, centroids, seen, delta_v, delta_d,
                                       momentum, aggregation == "max", compact_coef, margin_coef, reg_coef,
                                       extras)
    return LMDLStep(loss, *extras, logits)


_CONSTANTS: dict = {}


def _class_constants(num_classes: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Cached (I_K, +inf·I_K) for :class:`LMDLFusedStep`: I_K[y] is the one-hot matrix Y in
    one op, and adding +inf·I (0 off the diagonal) masks the self pair of d_cj."""
    key = ("eye", num_classes, dtype, device)
    found = _CONSTANTS.get(key)
    if found is None:
        eye = torch.eye(num_classes, dtype=dtype, device=device)
        self_inf = torch.zeros_like(eye).fill_diagonal_(float("inf"))
        found = _CONSTANTS[key] = (eye, self_inf)
    return found


def _loss_coefficients(compact_coef: float, margin_coef: float, reg_coef: float, dtype, device) -> Tensor:
    """Cached tensor (1, λα, λβ, λγ): loss = terms · coefficients without a host-to-tensor copy per step."""
    key = ("coef", compact_coef, margin_coef, reg_coef, dtype, device)
    found = _CONSTANTS.get(key)
    if found is None:
        if len(_CONSTANTS) > 256:  # e.g. a λ schedule: bound the cache, don't grow per step
            _CONSTANTS.clear()
        found = _CONSTANTS[key] = torch.tensor([1.0, compact_coef, margin_coef, reg_coef], dtype=dtype, device=device)
    return found
