"""Independent, deliberately slow reference implementations of the SPEC §2 losses.

Written straight from the formulas with Python loops over classes / samples / pairs and
without any code from ``unimargin.heads``; the tests compare the vectorised heads to these.
"""

from __future__ import annotations

import math

import torch

# issue 16's grid of class counts (benchmarks/heads_speed.py K_GRID): the fast paths are
# tested equal to their formula at each K, on both sides of every dispatch threshold
BENCHMARK_K_GRID = (10, 32, 64, 65, 100, 256, 1000, 10000)


def ce_written_out(z, y):
    """mean_i [log Σ_k exp z_ik − z_{i,y_i}]."""
    return (torch.logsumexp(z, dim=1) - z[torch.arange(len(y)), y]).mean()


def cosines(f, W):
    fn = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    wn = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return fn @ wn.T


def normalized_ce_reference(f, y, W, scale, margin, kind):
    """normface / cosface / arcface (SPEC §2.2–2.4), one sample at a time."""
    cos = cosines(f, W)
    rows = []
    for i in range(len(y)):
        row = [scale * cos[i, k] for k in range(W.shape[0])]
        c = cos[i, int(y[i])]
        if kind == "cosface":
            row[int(y[i])] = scale * (c - margin)
        elif kind == "arcface":
            theta = torch.acos(c.clamp(-1 + 1e-7, 1 - 1e-7))
            if float(theta) + margin > math.pi:
                row[int(y[i])] = scale * (c - margin * math.sin(margin))
            else:
                row[int(y[i])] = scale * torch.cos(theta + margin)
        rows.append(torch.stack(row))
    return ce_written_out(torch.stack(rows), y)


def bce_reference(f, y, W, b, *, unified, normalize=False, scale=16.0, margin=0.0, neg_weight=1.0):
    """SPEC §2.7/2.8 with log(1 + exp(·)) written out per sample and class (moderate z only)."""
    a = scale * cosines(f, W) if normalize else f @ W.T
    total = 0.0
    for i in range(len(y)):
        for k in range(W.shape[0]):
            bias = b if unified else b[k]
            if k == int(y[i]):
                z = a[i, k] - (scale * margin if normalize else 0.0) - bias
                total = total + torch.log(1 + torch.exp(-z))
            else:
                z = a[i, k] - bias
                total = total + neg_weight * torch.log(1 + torch.exp(z))
    return total / len(y)


def center_reference_step(f, y, W, b, centers, center_weight, center_lr):
    """Loss of SPEC §2.5 and the [Center] update, class by class."""
    z = f @ W.T + (b if b is not None else 0.0)
    ce = ce_written_out(z, y)
    sq = sum(0.5 * ((f[i] - centers[int(y[i])]) ** 2).sum() for i in range(len(y))) / len(y)
    new = centers.clone()
    for j in range(W.shape[0]):
        members = [i for i in range(len(y)) if int(y[i]) == j]
        delta = sum((centers[j] - f[i].detach() for i in members), torch.zeros_like(centers[j]))
        new[j] = centers[j] - center_lr * delta / (1 + len(members))
    return ce + center_weight * sq, ce, sq, new


def lmdl_reference_step(f, y, W, b, centroids, seen, *, delta_v=0.5, delta_d=1.5, alpha=1.0,
                        beta=1.0, gamma=0.001, mu=0.99, lam=1.0, aggregation="max"):
    """SPEC §2.6 exactly as written, one class at a time (like the authors' code).

    Returns loss, dict of terms, and the updated (centroids, seen).
    """
    K = W.shape[0]
    bias = b if b is not None else torch.zeros(K, dtype=W.dtype)
    ce = ce_written_out(f @ W.T + bias, y)
    new_c, new_seen = centroids.clone(), seen.clone()
    compact, margin, reg = [], [], []
    for c in sorted(set(y.tolist())):
        fc = f[y == c]
        batch_mean = fc.mean(0)
        m = (1 - mu) * batch_mean + mu * centroids[c].detach() if bool(seen[c]) else batch_mean
        compact.append(torch.stack([torch.relu(torch.linalg.norm(fi - m) - delta_v) ** 2 for fi in fc]).mean())
        hinges = []
        for j in range(K):
            if j == c:
                continue
            diff = W[c] - W[j]
            d = (diff @ batch_mean + bias[c] - bias[j]) / torch.clamp(torch.linalg.norm(diff), min=1e-12)
            hinges.append(torch.relu(delta_d - d))
        hinges = torch.stack(hinges)
        margin.append(hinges.max() if aggregation == "max" else hinges.mean())
        reg.append(torch.linalg.norm(m))
        new_c[c] = m.detach()
        new_seen[c] = True
    terms = {
        "ce": ce,
        "compact": torch.stack(compact).mean(),
        "margin": torch.stack(margin).mean(),
        "reg": torch.stack(reg).mean(),
    }
    loss = ce + lam * (alpha * terms["compact"] + beta * terms["margin"] + gamma * terms["reg"])
    return loss, terms, new_c, new_seen
