"""Divergence guards (DESIGN.md "Training engine"): divergence is an outcome, not a crash.

Every check agrees across processes (a MAX all-reduce) so no process hangs in a collective
while another stops. :class:`Diverged` carries where (epoch, step) and why (term).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from unimargin import distributed as udist


class Diverged(Exception):
    """Raised inside the loop when training diverged; carries where and why."""

    def __init__(self, message: str, *, epoch: int, step: int | None, term: str):
        super().__init__(message)
        self.epoch, self.step, self.term = epoch, step, term


def non_finite_state(module: nn.Module) -> str | None:
    """Name of the first parameter/buffer holding NaN/Inf, or None."""
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_step(out, epoch: int, step: int, max_score: float) -> None:
    """Stop on a non-finite loss (naming the term) or exploding scores, on every process."""
    with torch.no_grad():
        loss_ok = torch.isfinite(out.loss.detach()).float()
        logits = out.logits.detach()
        smax = logits.abs().max() if logits.numel() else torch.zeros((), device=logits.device)
        smax = torch.where(torch.isfinite(smax), smax, torch.full_like(smax, math.inf))
        flags = torch.stack([1.0 - loss_ok, smax.float()])
        if udist.is_distributed():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        loss_bad, smax = float(flags[0]) > 0, float(flags[1])
    if loss_bad:
        bad_terms = [k for k, v in out.terms.items() if not bool(torch.isfinite(v))]
        which = ", ".join(bad_terms) if bad_terms else "loss"
        raise Diverged(f"epoch {epoch}, step {step}: the loss is not finite (term: {which})",
                       epoch=epoch, step=step, term=which)
    if not smax <= max_score:
        raise Diverged(f"epoch {epoch}, step {step}: scores exceed max_score={max_score:g} "
                       f"(max |score| {smax:.4g})", epoch=epoch, step=step, term="scores")


def check_eval_outputs(features: torch.Tensor, scores: torch.Tensor, epoch: int,
                       max_feature_norm: float, split: str) -> None:
    """Raise :class:`Diverged` when evaluated outputs are non-finite or features explode."""
    if not (bool(torch.isfinite(features).all()) and bool(torch.isfinite(scores).all())):
        raise Diverged(f"epoch {epoch}: {split} features or scores are not finite", epoch=epoch,
                       step=None, term=f"{split} outputs")
    fmax = float(torch.linalg.vector_norm(features, dim=1).max()) if len(features) else 0.0
    if fmax > max_feature_norm:
        raise Diverged(f"epoch {epoch}: {split} feature norm {fmax:.4g} exceeds max_feature_norm="
                       f"{max_feature_norm:g}", epoch=epoch, step=None, term=f"{split} features")
