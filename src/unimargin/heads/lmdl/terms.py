"""THE lmdl formula (SPEC §2.6): the three discriminative terms on the classes present in a
batch, under autograd, exact under data parallelism through ``reduce``.

This is the definition every faster path is tested equal to (``fused.py`` and the compiled
kernel in ``unimargin._native``), and what runs under DDP and for K above the fused step's
range. The docs (docs/heads/lmdl.md) point here.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

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
    every term equals the single-process value on the concatenated batch.

    Numerics (SPEC §2.6): every d_cj that enters the loss (and its gradient) is computed
    from the difference vector w_c − w_j, never from ‖w_c‖² + ‖w_j‖² − 2 w_cᵀw_j, which
    cancels in float32 when ‖w_c − w_j‖ ≪ ‖w‖. Max aggregation uses the expansion only to
    rank candidates for j*(c), with a rounding-error bound deciding which are "near" the
    minimum (:func:`_margin_candidates`); mean aggregation sums the hinge over difference
    vectors in bounded-memory blocks (:class:`_MeanMarginHinge`). Norms at 0 (singleton
    classes, identical weights) have gradient 0 to every order (:func:`safe_norm`), so
    second-order gradients (``create_graph=True``) are finite and exact elsewhere.
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
    resid = features - centroid_p[rows]
    if delta_v == 0:  # [‖r‖]₊² = ‖r‖²: smooth, and its second derivative at r = 0 is 2I, not 0
        hinge_sq = resid.square().sum(1)
    else:  # safe_norm: a singleton unseen class has r = 0 exactly (NaN second derivative otherwise)
        hinge_sq = F.relu(safe_norm(resid) - delta_v).square()
    hinge_per_class = reduce(features.new_zeros(present.numel()).index_add(0, rows, hinge_sq))
    compact = (hinge_per_class / counts).sum() / n_present

    if aggregation == "max":
        with torch.no_grad():
            if logits is not None and reduce is _identity:  # in place: P×K temporaries are megabytes at large K
                centroid_logits = logits.new_zeros((present.numel(), num_classes)).index_add_(0, rows, logits)
                centroid_logits /= counts[:, None]
                # bounds the rounding of a mean of n logits (see _margin_candidates)
                scale = features.new_zeros(present.numel()).index_add_(
                    0, rows, torch.linalg.vector_norm(features.detach(), dim=1)) / counts
                n_max = int(counts.max()) if counts.numel() else 0
            else:
                centroid_logits, scale, n_max = None, torch.linalg.vector_norm(mean_p.detach(), dim=1), 0
        per_class = _max_margin_hinge(mean_p, present, weight, bias, delta_d, centroid_logits, scale, n_max)
    else:
        per_class = _mean_margin_hinge(mean_p, present, weight, bias, delta_d)
    margin = per_class.sum() / n_present

    reg = safe_norm(centroid_p).sum() / n_present
    return LMDLTerms(compact, margin, reg, present, centroid_p.detach())


# Elements per block of difference vectors (P_b × K × d): 16 MiB of float32 temporaries
_BLOCK = 1 << 22


def safe_norm(x: Tensor) -> Tensor:
    """‖x‖₂ over the last dim with gradient 0 at x = 0 to every order.

    ``torch.linalg.vector_norm`` has the subgradient 0 at 0 to first order but its second
    derivative there is NaN (a singleton class, unseen, has residual exactly 0); the double
    ``where`` keeps the square root away from 0 in both passes.
    """
    sq = x.square().sum(-1)
    nonzero = sq > 0
    return torch.where(nonzero, torch.where(nonzero, sq, 1.0).sqrt(), 0.0)


# finfo(dtype).eps / 2 of the CPU dtypes, looked up once (the lmdl head reads it every step)
CPU_UNIT_ROUNDOFF = {dtype: torch.finfo(dtype).eps / 2 for dtype in (torch.float32, torch.float64)}


def unit_roundoff(*tensors: Tensor) -> float:
    """The unit roundoff u of the least precise arithmetic the tensors' matmuls run in:
    finfo(dtype).eps / 2, and 2^-11 for float32 on CUDA when TF32 matmuls are allowed
    (``torch.backends.cuda.matmul.allow_tf32`` / ``set_float32_matmul_precision``)."""
    u = 0.0
    for t in tensors:
        if t is None:
            continue
        eps = torch.finfo(t.dtype).eps / 2
        if t.dtype == torch.float32 and t.device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
            eps = 2.0 ** -11 if torch.get_float32_matmul_precision() == "high" else 2.0 ** -8
        u = max(u, eps)
    return u


# Pairs with D̂² < _NEAR · τ · σ_c are "near": the expansion's D̂ is not trusted at all there
_NEAR = 256.0


def _margin_candidates(mean_p: Tensor, present: Tensor, weight: Tensor, bias: Tensor | None,
                       centroid_logits: Tensor | None, feature_scale: Tensor, n_max: int) -> Tensor:
    """Boolean P×K: the classes j ≠ c that may attain min_j d_cj (never c itself).

    The expansion d̂_cj = (ẑ_cc − ẑ_cj) / D̂_cj, D̂² = ‖w_c‖² + ‖w_j‖² − 2 w_cᵀw_j (one P×K×d
    matmul, no P×K×d tensor) can be arbitrarily wrong when ‖w_c − w_j‖ ≪ ‖w‖, so it only
    ranks, and "near the minimum" is defined by a-priori rounding-error bounds so that the
    true arg-min is never excluded. With u the unit roundoff (:func:`unit_roundoff`),
    τ = 2 (d + n_max + 8) u (twice the classical γ_n bound of an n-term dot product or
    mean), a_c = mean ‖f_i‖ over the class (≥ ‖m̄_c‖; it also bounds the
    class-mean-of-logits shortcut), σ_c = ‖w_c‖² + max_k ‖w_k‖² and
    ε_c = τ (‖w_c‖ a_c + |b_c| + max_k ‖w_k‖ a_c + max_k |b_k|):

    - |D̂² − D²| ≤ τ σ_c and |n̂ − n| ≤ ε_c + 2u |n̂|. A pair with D̂² < R_c² = 256 τ σ_c is
      *near*: always a candidate (its exact distance is computed).
    - Otherwise ρ = |D̂² − D²|/D̂² ≤ 1/256, so |d̂ − d| ≤ (ε_c/R_c + (ρ + 6u)|d̂|)/(1 − ρ).
    - T_c = the exact d of j₀ = arg-min of d̂ over the pairs that are not near, plus its own
      rounding bound τ (a_c + |Δb|/D + |d|): T_c ≥ min_j d_cj.
    - j is a candidate if near, or if d̂_cj minus its error bound is ≤ T_c, which reduces to
      one comparison with a per-row threshold: d̂_cj ≤ U_c.

    With well-separated weights this is one or two classes per row; with near-duplicates
    (‖w‖/‖w_c − w_j‖ ≳ 1/(16√τ)) it grows, up to every class, and the exact re-check pays for it
    (blocked, bounded memory). Cost: ~4 elementwise P×K passes beyond the ranking itself.
    """
    n = present.numel()
    num_classes, dim = weight.shape
    u = unit_roundoff(mean_p, weight, centroid_logits)
    tau = 2.0 * (dim + n_max + 8) * u
    z = F.linear(mean_p, weight, bias) if centroid_logits is None else centroid_logits  # (P, K)
    dist = z.gather(1, present[:, None]) - z                                 # n̂, then d̂ in place
    w_norm = torch.linalg.vector_norm(weight, dim=1)
    sq_norm = w_norm.square()
    sq_c = sq_norm[present]
    denom_sq = torch.addmm(sq_c[:, None] + sq_norm[None, :], weight[present], weight.t(), alpha=-2.0)
    near_sq = (_NEAR * tau) * (sq_c + sq_norm.max())                         # R_c²
    near_sq.clamp_min_(4e-24)  # weights ~0: every pair near, and no 0/0 below
    near = denom_sq < near_sq[:, None]
    dist.mul_(denom_sq.clamp_min_(1e-24).rsqrt_()).masked_fill_(near, float("inf"))
    rows = torch.arange(n, device=mean_p.device)
    dist[rows, present] = float("inf")
    first = dist.argmin(1) if n else present
    # T_c from the exact distance of j₀ (any j₀ gives a valid bound; a good one keeps the set small)
    c_abs = w_norm[present] * feature_scale
    b_abs = 0.0
    if bias is not None:
        c_abs = c_abs + bias[present].abs()
        b_abs = bias.abs().max()
    d0, _, _, norm0 = _pair_distance(mean_p, weight[present], weight[first], None if bias is None else bias[present],
                                     None if bias is None else bias[first])
    db0 = 0.0 if bias is None else (bias[present] - bias[first]).abs()
    top = d0 + tau * (feature_scale + db0 / norm0.clamp_min(1e-12) + d0.abs())
    rho = 1.0 / _NEAR
    eps_c = tau * (c_abs + w_norm.max() * feature_scale + b_abs)
    top = top + eps_c / (near_sq.sqrt() * (1 - rho))
    kappa = (rho + 6 * u) / (1 - rho)
    # d̂ − κ|d̂| ≤ T  ⟺  d̂ ≤ T/(1 − κ) if T ≥ 0, d̂ ≤ T/(1 + κ) if T < 0
    limit = torch.where(top >= 0, top / (1 - kappa), top / (1 + kappa))
    cand = (dist <= limit[:, None]).logical_or_(near)
    cand[rows, present] = False
    return cand


def pair_norms(weight: Tensor) -> Tensor:
    """K×K ‖w_c − w_j‖ for the fused step (no autograd): the expansion (``torch.cdist``'s
    matmul mode, fast) where it is accurate, and the difference vector where it may cancel:
    every off-diagonal pair with cdist² < 256 τ (‖w_c‖² + ‖w_j‖²), τ = 2 (d + 8) u, is
    recomputed from w_c − w_j (relative error of the rest ≤ 1/256 · what the bound allows,
    in practice ~u ‖w‖²/D²). The diagonal (the self pair, masked by the caller) is left as is."""
    dist = torch.cdist(weight, weight)
    sq = weight.square().sum(1)
    tau = 2.0 * (weight.shape[1] + 8) * unit_roundoff(weight)
    near = dist.square() < (_NEAR * tau) * (sq[:, None] + sq[None, :])
    near.fill_diagonal_(False)
    if near.any():  # near-duplicate class weights: a handful of pairs, recomputed exactly
        i, j = near.nonzero(as_tuple=True)
        dist[i, j] = torch.linalg.vector_norm(weight[i] - weight[j], dim=1)
    return dist


def _pair_distance(mean_rows: Tensor, w_c: Tensor, w_j: Tensor, b_c: Tensor | None, b_j: Tensor | None):
    """d_cj for paired rows from the difference vector w_c − w_j (exact in float32 when the
    two are close: Sterbenz), never from the expansion: (d, diff, numer, ‖diff‖)."""
    diff = w_c - w_j
    numer = (diff * mean_rows).sum(-1)
    if b_c is not None:
        numer = numer + (b_c - b_j)
    norm = safe_norm(diff)
    return numer / norm.clamp_min(1e-12), diff, numer, norm


def _max_margin_hinge(mean_p, present, weight, bias, delta_d, centroid_logits, feature_scale, n_max) -> Tensor:
    """max_{j≠c} [δ_d − d_cj]₊ = [δ_d − min_{j≠c} d_cj]₊ per present class.

    The max only passes gradient to its arg-max pair. Without autograd, the expansion
    selects the candidates (:func:`_margin_candidates`), the candidates' d_cj are computed
    exactly from difference vectors (blocked) and j*(c) is their arg-min (lowest j on
    ties); then d_{c,j*} is recomputed from w_c − w_{j*} with gradient: the value and
    gradient of differentiating the full P×K matrix, with no P×K×d backward and no
    cancellation in what enters the loss.
    """
    n = present.numel()
    num_classes, dim = weight.shape
    with torch.no_grad():
        cand = _margin_candidates(mean_p, present, weight, bias, centroid_logits, feature_scale, n_max)
        row, col = cand.nonzero(as_tuple=True)
        exact = torch.empty(row.numel(), dtype=mean_p.dtype, device=mean_p.device)
        step = max(1, _BLOCK // max(dim, 1))
        for lo in range(0, row.numel(), step):  # one pass unless near-duplicates make many candidates
            r, j = row[lo:lo + step], col[lo:lo + step]
            c = present[r]
            exact[lo:lo + step] = _pair_distance(mean_p[r], weight[c], weight[j], None if bias is None else bias[c],
                                                 None if bias is None else bias[j])[0]
        best = exact.new_full((n,), float("inf")).scatter_reduce_(0, row, exact, "amin")
        first = col.masked_fill(exact != best[row], num_classes)
        nearest = torch.full_like(present, num_classes).scatter_reduce_(0, row, first, "amin")
        nearest = torch.where(nearest == num_classes, present, nearest)  # K = 1: no j ≠ c
    pairs = torch.cat([present, nearest])  # one gather (and one scatter in backward) for both ends
    w_pairs = weight[pairs]
    b_pairs = None if bias is None else bias[pairs]
    d_nearest = _pair_distance(mean_p, w_pairs[:n], w_pairs[n:], None if bias is None else b_pairs[:n],
                               None if bias is None else b_pairs[n:])[0]
    return F.relu(delta_d - d_nearest)


def _mean_margin_hinge(mean_p, present, weight, bias, delta_d) -> Tensor:
    """mean_{j≠c} [δ_d − d_cj]₊ per present class, every d_cj from the difference vector
    w_c − w_j (no cancellation), blocked over the present classes so that no more than
    :data:`_BLOCK` elements of P×K×d exist at once, forward and backward
    (:class:`_MeanMarginHinge`; its backward is differentiable: double backward works)."""
    return _MeanMarginHinge.apply(mean_p, weight, bias, present, float(delta_d))


class _MeanMarginHinge(torch.autograd.Function):
    """h_c = Σ_{j≠c} [δ_d − d_cj]₊ / (K − 1), d_cj = (Δ_cjᵀ m̄_c + b_c − b_j) / max(‖Δ_cj‖, 1e-12),
    Δ_cj = w_c − w_j, recomputed block by block in the backward (memory O(block), not O(P·K·d)).

    With G_cj = ∂L/∂h_c · [hinge active, j ≠ c] / (K − 1), D = max(‖Δ‖, 1e-12):
    A = ∂L/∂numer = −G/D, C = ∂L/∂‖Δ‖ = G·numer/D² (0 where clamped);
    ∂L/∂Δ_cj = A_cj m̄_c + C_cj Δ_cj/‖Δ_cj‖; ∂L/∂m̄_c = Σ_j A_cj Δ_cj;
    ∂L/∂w_c += Σ_j ∂L/∂Δ_cj, ∂L/∂w_j −= Σ_c ∂L/∂Δ_cj; ∂L/∂b_c += Σ_j A_cj, ∂L/∂b_j −= Σ_c A_cj.
    The backward uses differentiable tensor ops on the saved inputs, so create_graph works.
    """

    @staticmethod
    def forward(ctx, mean_p, weight, bias, present, delta_d):
        ctx.save_for_backward(mean_p, weight, bias, present)
        ctx.delta_d = delta_d
        out = mean_p.new_empty(present.numel())
        for rows in _row_blocks(present.numel(), weight.shape):
            dist, *_ = _block_distances(mean_p, weight, bias, present, rows)
            out[rows] = F.relu(delta_d - dist).sum(1)  # the self pair is +inf: hinge 0
        return out / max(weight.shape[0] - 1, 1)

    @staticmethod
    def backward(ctx, grad_out):
        mean_p, weight, bias, present = ctx.saved_tensors
        num_classes = weight.shape[0]
        grad_mean, grad_weight = [], torch.zeros_like(weight)
        grad_bias = None if bias is None else torch.zeros_like(bias)
        for rows in _row_blocks(present.numel(), weight.shape):
            dist, diff, numer, norm, clamped = _block_distances(mean_p, weight, bias, present, rows)
            g = (grad_out[rows] / max(num_classes - 1, 1))[:, None] * (ctx.delta_d - dist > 0)
            inv = norm.clamp_min(1e-12).reciprocal()
            a = -g * inv                                                   # ∂L/∂numer
            inv_free = torch.where(clamped, 0.0, inv)  # the guard passes no gradient (and no 0·inf)
            c_over_norm = g * numer * inv_free.square() * inv_free                 # (∂L/∂‖Δ‖)/‖Δ‖
            grad_mean.append(torch.bmm(a[:, None, :], diff).squeeze(1))
            m = mean_p[rows]
            to_c = a.sum(1)[:, None] * m + torch.bmm(c_over_norm[:, None, :], diff).squeeze(1)
            to_j = a.t().mm(m) + torch.einsum("ck,ckd->kd", c_over_norm, diff)
            grad_weight = grad_weight.index_add(0, present[rows], to_c) - to_j
            if bias is not None:
                grad_bias = grad_bias.index_add(0, present[rows], a.sum(1)) - a.sum(0)
        grad_mean = torch.cat(grad_mean) if grad_mean else torch.zeros_like(mean_p)
        return grad_mean, grad_weight, grad_bias, None, None


def _row_blocks(n_rows: int, weight_shape) -> list[slice]:
    num_classes, dim = weight_shape
    step = max(1, _BLOCK // max(num_classes * dim, 1))
    return [slice(lo, min(lo + step, n_rows)) for lo in range(0, n_rows, step)]


def _block_distances(mean_p, weight, bias, present, rows: slice):
    """For present rows ``rows``: d_cj (+inf at j = c), Δ_cj = w_c − w_j (P_b×K×d), numer, ‖Δ‖ and
    whether the 1e-12 guard is active."""
    cls = present[rows]
    diff = weight[cls][:, None, :] - weight[None, :, :]
    numer = torch.bmm(diff, mean_p[rows][:, :, None]).squeeze(2)
    if bias is not None:
        numer = numer + (bias[cls][:, None] - bias[None, :])
    norm = safe_norm(diff)
    clamped = norm < 1e-12
    dist = numer / norm.clamp_min(1e-12)
    is_self = torch.zeros_like(dist, dtype=torch.bool)
    is_self[torch.arange(cls.numel(), device=dist.device), cls] = True
    return dist.masked_fill(is_self, float("inf")), diff, numer, norm, clamped
