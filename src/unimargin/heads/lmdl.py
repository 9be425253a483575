"""lmdl head: the large-margin discriminative loss [LMDL] (SPEC §2.6).

Pure function :func:`lmdl_terms` (vectorised with index_add / gather, no loop over classes
or samples) + the stateful :class:`LMDLHead` that owns W, b and the momentum centroids.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed as udist
from . import lmdl_kernel
from .base import HeadOutput, LinearHead, check_real, cross_entropy_mean
from .registry import CAREFUL, register_head

AGGREGATIONS = ("max", "mean")


class LMDLTerms(NamedTuple):
    compact: Tensor         # L_compact (scalar)
    margin: Tensor          # L_margin (scalar)
    reg: Tensor             # L_reg (scalar)
    present: Tensor         # (P,) long: classes present in the (global) batch
    new_centroids: Tensor   # (P, d) detached momentum centroids m_c of those classes


def _identity(t: Tensor) -> Tensor:
    return t


def lmdl_terms(
    features: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    centroids: Tensor,
    seen: Tensor,
    *,
    delta_v: float,
    delta_d: float,
    momentum: float,
    aggregation: str = "max",
    reduce: Callable[[Tensor], Tensor] = _identity,
    logits: Tensor | None = None,
) -> LMDLTerms:
    """The three discriminative terms of SPEC §2.6 for one batch.

    - m̄_c = mean_{i∈B_c} f_i;  m_c = (1−μ) m̄_c + μ sg(M_c) if seen[c] else m̄_c
    - L_compact = mean_{c∈C_B} mean_{i∈B_c} [‖f_i − m_c‖ − δ_v]₊²
    - d_cj = ((w_c − w_j)ᵀ m̄_c + b_c − b_j) / max(‖w_c − w_j‖, 1e-12)
      L_margin = mean_{c∈C_B} agg_{j≠c} [δ_d − d_cj]₊   (agg = max or mean)
    - L_reg = mean_{c∈C_B} ‖m_c‖

    ``reduce`` sums a tensor over data-parallel processes (differentiably); it is applied
    to the per-class feature sums, counts and per-class sums of compactness hinges, so
    every term equals the single-process value on the concatenated batch. The pairwise
    distances use ‖w_c − w_j‖² = ‖w_c‖² + ‖w_j‖² − 2 w_cᵀw_j (no P×K×d tensor).
    ``logits`` (optional, = W f + b of this batch) saves a matmul: W m̄_c + b is the class
    mean of the logits. It is only used without ``reduce`` (local batch = whole batch).
    """
    num_classes, dim = weight.shape
    counts_all = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    if reduce is not _identity:  # one collective for sums and counts
        sums = features.new_zeros((num_classes, dim)).index_add(0, labels, features)
        packed = reduce(torch.cat([sums, counts_all[:, None]], 1))
        sums, counts_all = packed[:, :dim], packed[:, dim].detach()
    present = counts_all.nonzero().squeeze(1)  # sorted class ids of C_B
    n_present = max(present.numel(), 1)  # all-empty batch: terms are 0, not 0/0
    counts = counts_all[present]
    rows = torch.searchsorted(present, labels)  # row of each sample's class in the P rows

    # only the P present classes are touched: O(P·d), not O(K·d), at large K
    if reduce is _identity:  # local batch = whole batch: sum straight into the P rows
        sums_p = features.new_zeros((present.numel(), dim)).index_add(0, rows, features)
    else:
        sums_p = sums[present]
    mean_p = sums_p / counts[:, None]                                        # m̄_c
    history = centroids.detach()[present]  # a copy: the buffers are updated in place later
    # lerp(m̄, M, μ) = (1−μ) m̄ + μ M; M carries no gradient (stop-gradient)
    centroid_p = torch.where(seen.detach()[present][:, None], torch.lerp(mean_p, history, momentum), mean_p)

    # compactness: per-sample hinge, averaged per class, then over classes
    dist_to_centroid = torch.linalg.vector_norm(features - centroid_p[rows], dim=1)  # grad 0 at 0
    hinge_sq = F.relu(dist_to_centroid - delta_v).pow(2)
    hinge_per_class = reduce(features.new_zeros(present.numel()).index_add(0, rows, hinge_sq))
    compact = (hinge_per_class / counts).sum() / n_present

    if aggregation == "max":
        centroid_logits = None
        if logits is not None and reduce is _identity:
            with torch.no_grad():  # in place: P×K temporaries are megabytes at large K
                centroid_logits = logits.new_zeros((present.numel(), num_classes)).index_add_(0, rows, logits)
                centroid_logits /= counts[:, None]
        per_class = _max_margin_hinge(mean_p, present, weight, bias, delta_d, centroid_logits)
    else:
        per_class = _mean_margin_hinge(mean_p, present, weight, bias, delta_d)
    margin = per_class.sum() / n_present

    reg = torch.linalg.vector_norm(centroid_p, dim=1).sum() / n_present
    return LMDLTerms(compact, margin, reg, present, centroid_p.detach())


def _pair_distances(mean_p: Tensor, present: Tensor, weight: Tensor, bias: Tensor | None,
                    centroid_logits: Tensor | None = None) -> Tensor:
    """d_cj (P×K) for every present class c and every class j (the j = c entry is junk).

    numerator z_c(m̄_c) − z_j(m̄_c) with z(m̄_c) = W m̄_c + b (or ``centroid_logits``);
    ‖w_c − w_j‖² = ‖w_c‖² + ‖w_j‖² − 2 w_cᵀw_j, so no P×K×d tensor is formed.
    """
    z = F.linear(mean_p, weight, bias) if centroid_logits is None else centroid_logits  # (P, K)
    numer = z.gather(1, present[:, None]) - z
    sq_norm = torch.linalg.vector_norm(weight, dim=1).square()  # no K×d temporary
    denom_sq = torch.addmm(sq_norm[present][:, None] + sq_norm[None, :], weight[present], weight.t(), alpha=-2.0)
    if torch.is_grad_enabled():
        return numer * denom_sq.clamp_min(1e-24).rsqrt()                 # ÷ max(‖w_c−w_j‖, 1e-12)
    return numer.mul_(denom_sq.clamp_min_(1e-24).rsqrt_())  # the arg-min search: in place


def _mean_margin_hinge(mean_p, present, weight, bias, delta_d) -> Tensor:
    """mean_{j≠c} [δ_d − d_cj]₊ per present class (fully differentiable P×K path)."""
    hinge = F.relu(delta_d - _pair_distances(mean_p, present, weight, bias))
    is_self = torch.zeros_like(hinge, dtype=torch.bool)
    is_self[torch.arange(present.numel(), device=hinge.device), present] = True
    return hinge.masked_fill(is_self, 0.0).sum(1) / (weight.shape[0] - 1)


def _max_margin_hinge(mean_p, present, weight, bias, delta_d, centroid_logits=None) -> Tensor:
    """max_{j≠c} [δ_d − d_cj]₊ = [δ_d − min_{j≠c} d_cj]₊ per present class.

    The max only passes gradient to its arg-max pair, so the P×K distances are computed
    without autograd to find j*(c) = argmin_j d_cj, and d_{c,j*} is recomputed with the
    direct formula and gradient: the same value and gradient as differentiating the full
    P×K matrix, at a third of the cost (no P×K×d backward matmuls).
    """
    with torch.no_grad():
        dist = _pair_distances(mean_p, present, weight, bias, centroid_logits)
        dist[torch.arange(present.numel(), device=dist.device), present] = float("inf")
        nearest = dist.argmin(1) if present.numel() else present
    n = present.numel()
    pairs = torch.cat([present, nearest])  # one gather (and one scatter in backward) for both ends
    w_pairs = weight[pairs]
    diff = w_pairs[:n] - w_pairs[n:]
    numer = (diff * mean_p).sum(1)
    if bias is not None:
        b_pairs = bias[pairs]
        numer = numer + (b_pairs[:n] - b_pairs[n:])
    d_nearest = numer / torch.linalg.vector_norm(diff, dim=1).clamp_min(1e-12)
    return F.relu(delta_d - d_nearest)


class _WeightedHingeNorm(torch.autograd.Function):
    """Σ_i w_i [‖x_i‖₂ − δ]₊^p for p ∈ {1, 2}, with a hand-written backward.

    One autograd node instead of norm/sub/relu/pow/dot (linalg.vector_norm's backward
    alone costs more than the whole forward at small sizes). Gradient
    w_i p [‖x_i‖ − δ]₊^{p−1} x_i / ‖x_i‖, taken as 0 where the hinge is inactive and
    at x_i = 0 (the convention of vector_norm). ``weight`` gets no gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, delta: float, power: int) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=1)
        hinge = F.relu(norm - delta) if delta else norm
        active = hinge > 0
        slope = hinge * 2.0 if power == 2 else active.to(x.dtype)         # d[h]₊^p / dh
        ctx.save_for_backward(x, torch.where(active, weight * slope / norm.clamp_min(1e-30), 0.0))
        return (hinge.square() if power == 2 else hinge).dot(weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, coef = ctx.saved_tensors
        return x * (coef * grad)[:, None], None, None, None


DENSE_MAX_K = 64  # at most this many classes, LMDLHead uses the dense path (crossover measured ~64,
# before the fused single-process step; not re-measured since)


class LMDLDenseTerms(NamedTuple):
    compact: Tensor         # L_compact (scalar)
    margin: Tensor          # L_margin (scalar)
    reg: Tensor             # L_reg (scalar)
    present_mask: Tensor    # (K,) bool: classes present in the (global) batch
    new_centroids: Tensor   # (K, d) detached m_c; rows of absent classes are meaningless


def lmdl_terms_dense(
    features: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    centroids: Tensor,
    seen: Tensor,
    *,
    delta_v: float,
    delta_d: float,
    momentum: float,
    aggregation: str = "max",
    reduce: Callable[[Tensor], Tensor] = _identity,
) -> LMDLDenseTerms:
    """Same terms as :func:`lmdl_terms` (SPEC §2.6), computed for all K classes with masks.

    For small K the cost of :func:`lmdl_terms` is dominated by per-op overhead (nonzero,
    searchsorted, index gathers of the present classes), not by arithmetic. Here every
    class gets a row: the one-hot matrix Y (B×K) gives the class sums Yᵀf and the
    per-sample centroids Y m; absent classes have zero weight in every mean over C_B
    (weights 1/|C_B| on present classes), and the pair distances are the full K×K matrix
    with the self pair masked. No data-dependent shapes, no host synchronisation.
    Cost O(K²d) for the pairs, so only meant for K ≲ B.
    """
    num_classes, dim = weight.shape
    with torch.no_grad():
        # Y (B×K); F.one_hot would re-validate the labels (Head.check_labels did) with a host sync
        onehot = features.new_zeros((labels.shape[0], num_classes)).scatter_(1, labels[:, None], 1.0)
        counts = onehot.sum(0)
    if reduce is _identity:
        with torch.no_grad():  # Yᵀ diag(1/n_y) f = m̄ in one matmul (one autograd node)
            inv_counts = counts.clamp_min(1).reciprocal()
            mean_op = (onehot * inv_counts).t()
        mean = mean_op.mm(features)                                            # m̄_c
    else:  # the counts must be global: one collective for sums and counts
        packed = reduce(torch.cat([onehot.t().mm(features), counts[:, None]], 1))
        sums, counts = packed[:, :dim], packed[:, dim].detach()
        inv_counts = counts.clamp_min(1).reciprocal()
        mean = sums * inv_counts[:, None]
    with torch.no_grad():
        present_mask = counts > 0
        # 1/|C_B| on present classes, 0 elsewhere (all-empty batch: terms are 0, not 0/0)
        class_weight = present_mask.to(features.dtype) / present_mask.sum().clamp_min(1)
        # per-sample weight 1/(n_c |C_B|): mean over the class, then over classes
        sample_weight = onehot.mv(inv_counts * class_weight)
        # lerp(m̄, M, μ) = (1−μ) m̄ + μ M for seen classes; lerp(m̄, M, 0) = m̄ otherwise
        history_weight = seen.to(features.dtype)[:, None] * momentum  # exact μ, no float32 detour
        is_self = torch.eye(num_classes, dtype=torch.bool, device=weight.device)
    centroid = torch.lerp(mean, centroids.detach().to(features.dtype), history_weight)

    compact = reduce(_WeightedHingeNorm.apply(features - onehot.mm(centroid), sample_weight, delta_v, 2))

    # d_cj of §2.6 for all K×K pairs; cdist = ‖w_c − w_j‖ in one autograd node
    z = F.linear(mean, weight, bias)                                           # W m̄_c + b
    dist = (z.diagonal()[:, None] - z) / torch.cdist(weight, weight).clamp_min(1e-12)
    if aggregation == "max":
        # max_{j≠c} [δ_d − d_cj]₊ = [δ_d − min_{j≠c} d_cj]₊: the hinge on K entries, not K²
        per_class = F.relu(delta_d - dist.masked_fill(is_self, float("inf")).min(1).values)
    else:
        per_class = F.relu(delta_d - dist).masked_fill(is_self, 0.0).sum(1) / (num_classes - 1)
    margin = per_class.dot(class_weight)

    reg = _WeightedHingeNorm.apply(centroid, class_weight, 0.0, 1)
    return LMDLDenseTerms(compact, margin, reg, present_mask, centroid.detach())


class LMDLFusedStep(torch.autograd.Function):
    """CE + λ(α L_compact + β L_margin + γ L_reg) of SPEC §2.6 in ONE autograd node
    (single process, all K classes, the masked formulation of :func:`lmdl_terms_dense`).

    Called through :func:`lmdl_fused_step`. ``apply(features, weight, bias, labels,
    centroids, seen, delta_v, delta_d, momentum, max_aggregation, compact_coef, margin_coef,
    reg_coef, extras)`` returns the two differentiable outputs ``(loss, logits)`` and appends
    ``terms, centroid, present_mask`` (no gradient) to the list ``extras``: fewer outputs,
    less autograd bookkeeping per step. loss = ce + Σ coef · term with
    terms = (ce, L_compact, L_margin, L_reg); centroid (K×d) = m_c for present classes and
    M_c (unchanged) for absent ones, i.e. the new buffer; logits = W f + b.

    On CPU tensors of float32/float64 the forward and backward run in the compiled kernel
    of :mod:`unimargin.heads.lmdl_kernel` when it is available (same formulas; the PyTorch
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
        pair_dist = torch.cdist(weight, weight)                                # ‖w_c − w_j‖
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
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_logits):
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

    Single process with K ≤ ``DENSE_MAX_K``: the whole step (logits, CE and the three
    terms) is one autograd node, :class:`LMDLFusedStep`, with a hand-derived backward;
    otherwise :func:`lmdl_terms_dense` / :func:`lmdl_terms` under autograd.

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
        dense = self.num_classes <= DENSE_MAX_K
        if dense and not sync:  # one autograd node for the whole step (the K ≲ 64 cost is per-op overhead)
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
        terms = lmdl_terms_dense(*args, **hp) if dense else lmdl_terms(*args, **hp, logits=logits)
        # one stack + dot instead of five scalar autograd nodes (λα, λβ, λγ folded)
        coef = logits.new_tensor([1.0, self.disc_weight * self.compact_weight,
                                  self.disc_weight * self.margin_weight, self.disc_weight * self.reg_weight])
        loss = torch.stack([ce, terms.compact, terms.margin, terms.reg]).dot(coef)
        if self.training:
            with torch.no_grad():
                new = terms.new_centroids.to(self.centroids.dtype)
                if dense:
                    self.centroids.copy_(torch.where(terms.present_mask[:, None], new, self.centroids))
                    self.seen.logical_or_(terms.present_mask)
                else:
                    self.centroids.index_copy_(0, terms.present, new)
                    self.seen.index_fill_(0, terms.present, True)
        parts = {"ce": ce, "compact": terms.compact, "margin": terms.margin, "reg": terms.reg}
        return HeadOutput(loss, logits, {k: v.detach() for k, v in parts.items()})

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, delta_v={self.delta_v}, delta_d={self.delta_d}, "
                f"momentum={self.momentum}, aggregation={self.aggregation!r}")
