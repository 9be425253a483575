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
