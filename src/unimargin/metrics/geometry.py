"""Feature geometry: compactness, distinctiveness, uniformity, centroid margins (SPEC §3.6).

All statistics are computed in float64 over the classes present in the evaluated set, with
class means μ_c = mean of that class's features. Vectorised with index_add / scatter; the
pairwise quantities use the K×K matrix of class means (K is the number of classes, never N).
"""

from __future__ import annotations

import math

import torch

from ._checks import as_tensor, check_labels, check_matrix, check_nonempty, check_vector

_EPS = 1e-12
RADIUS_QUANTILE = 0.95


def _class_means(f: torch.Tensor, y: torch.Tensor, num_classes: int):
    counts = torch.bincount(y, minlength=num_classes)
    sums = torch.zeros((num_classes, f.shape[1]), dtype=f.dtype).index_add_(0, y, f)
    means = sums / counts.clamp_min(1)[:, None].to(f.dtype)
    return means, counts


def _segment_quantile(values: torch.Tensor, groups: torch.Tensor, num_groups: int, q: float):
    """q-quantile of ``values`` within each group (linear interpolation, numpy's default).

    Sorting by (group, value) puts each group in one contiguous sorted run; the quantile of
    a run of length m sits at position q·(m − 1) inside it.
    """
    order = torch.sort(values).indices
    order = order[torch.sort(groups[order], stable=True).indices]
    v = values[order]
    counts = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    present = counts > 0
    pos = q * (counts[present] - 1).to(v.dtype)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = pos - lo.to(v.dtype)
    base = starts[present]
    out = torch.full((num_groups,), float("nan"), dtype=v.dtype)
    out[present] = v[base + lo] + frac * (v[base + hi] - v[base + lo])
    return out


def centroid_margins(features, labels, weight, bias=None) -> torch.Tensor:
    """Per-class distance from the class mean μ_c to the edge of its decision region (SPEC §3.6).

    margin_c = min_{j≠c} ((w_c − w_j)ᵀ μ_c + b_c − b_j) / ‖w_c − w_j‖ (SPEC §2.6's d_cj at
    μ_c), for the linear decision argmax_k (W f + b)_k. Positive: the mean is inside its
    own region, by that distance. Higher is better. ``weight``: (K, d); ``bias``: (K,) or
    None (= 0). Returns a float64 tensor (K,); classes without samples in ``labels`` get
    NaN (there is no mean to measure), documented so callers aggregate with nan-aware ops.
    """
    f = check_matrix(features, "features")
    w = check_matrix(weight, "weight", min_cols=1)
    num_classes = w.shape[0]
    if num_classes < 2:
        raise ValueError(f"weight must have at least 2 rows (classes), got shape {tuple(w.shape)}")
    if w.shape[1] != f.shape[1]:
        raise ValueError(f"weight has {w.shape[1]} columns but features have dimension {f.shape[1]}")
    y = check_labels(labels, f.shape[0], num_classes, data_name="features")
    check_nonempty(f.shape[0], "features")
    f = f.to(torch.float64)
    w = w.to(torch.float64)
    if bias is None:
        b = torch.zeros(num_classes, dtype=torch.float64)
    else:
        b = check_vector(as_tensor(bias, "bias").reshape(-1), "bias").to(torch.float64)
        if b.numel() != num_classes:
            raise ValueError(f"bias must have {num_classes} entries (one per class), got {b.numel()}")
    means, counts = _class_means(f, y, num_classes)
    # logits of each class mean for every class: A[c, j] = w_jᵀ μ_c + b_j
    logits = means @ w.T + b
    own = logits.diagonal()
    numer = own[:, None] - logits                                   # (w_c − w_j)ᵀμ_c + b_c − b_j
    denom = torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist").clamp_min(_EPS)
    d = numer / denom
    d.fill_diagonal_(float("inf"))
    margins = d.min(dim=1).values
    margins[counts == 0] = float("nan")
    return margins


def feature_geometry(features, labels, head=None) -> dict:
    """Compactness, distinctiveness and uniformity of features (SPEC §3.6).

    With μ_c the mean of class c over the given samples and C the classes present (>= 2):
    - intra_class_distance = mean_i ‖f_i − μ_{y_i}‖                       (lower better)
    - intra_class_cosine   = mean_i cos(f_i, μ_{y_i})                     (higher better)
    - inter_class_distance_min / _mean over pairs c≠j in C of ‖μ_c − μ_j‖ (higher better)
    - inter_class_angle_min / _mean: angle(μ_c, μ_j) in degrees           (higher better)
    - compactness_ratio = intra_class_distance / inter_class_distance_mean (lower better)
    - uniformity = std/mean (population std) of radius_c, the 95th percentile (linear
      interpolation) of ‖f_i − μ_c‖ in class c; 0 = equal radii        (lower better;
      0 when every radius is 0)
    - centroid_margin_min / _mean: :func:`centroid_margins` over C, when ``head`` has a
      ``linear_decision()`` returning (W, b_eff) (not None)                (higher better)
    Returns plain floats.
    """
    f = check_matrix(features, "features")
    check_nonempty(f.shape[0], "features")
    y = check_labels(labels, f.shape[0], None, data_name="features")
    f64 = f.to(torch.float64)
    num_classes = int(y.max()) + 1
    means, counts = _class_means(f64, y, num_classes)
    present = counts > 0
    if int(present.sum()) < 2:
        raise ValueError(
            f"feature_geometry needs samples of at least 2 classes, got classes "
            f"{torch.nonzero(present).flatten().tolist()}"
        )

    diff = f64 - means[y]
    dist = diff.norm(dim=1)
    f_norm = f64.norm(dim=1).clamp_min(_EPS)
    m_norm = means.norm(dim=1).clamp_min(_EPS)
    cos = (f64 * means[y]).sum(1) / (f_norm * m_norm[y])

    mu = means[present]
    k = mu.shape[0]
    iu = torch.triu_indices(k, k, offset=1)
    pair_dist = torch.cdist(mu, mu, compute_mode="donot_use_mm_for_euclid_dist")[iu[0], iu[1]]
    mu_hat = mu / mu.norm(dim=1, keepdim=True).clamp_min(_EPS)
    pair_cos = (mu_hat @ mu_hat.T)[iu[0], iu[1]].clamp(-1.0, 1.0)
    pair_angle = torch.rad2deg(torch.arccos(pair_cos))

    radii = _segment_quantile(dist, y, num_classes, RADIUS_QUANTILE)[present]
    r_mean = float(radii.mean())
    r_std = float(radii.std(correction=0))
    intra = float(dist.mean())
    inter_mean = float(pair_dist.mean())
    out = {
        "intra_class_distance": intra,
        "intra_class_cosine": float(cos.mean()),
        "inter_class_distance_min": float(pair_dist.min()),
        "inter_class_distance_mean": inter_mean,
        "inter_class_angle_min": float(pair_angle.min()),
        "inter_class_angle_mean": float(pair_angle.mean()),
        "compactness_ratio": intra / inter_mean if inter_mean > 0 else math.inf,
        "uniformity": r_std / r_mean if r_mean > 0 else 0.0,
    }
    decision = _linear_decision(head)
    if decision is not None:
        w, b = decision
        margins = centroid_margins(f64, y, w, b)
        present_m = margins[~torch.isnan(margins)]
        out["centroid_margin_min"] = float(present_m.min())
        out["centroid_margin_mean"] = float(present_m.mean())
    return out


def _linear_decision(head):
    if head is None:
        return None
    fn = getattr(head, "linear_decision", None)
    if fn is None:
        return None
    decision = fn()
    if decision is None:
        return None
    w, b = decision
    return w.detach(), (None if b is None else b.detach())
