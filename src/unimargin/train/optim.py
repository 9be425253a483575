"""Optimiser parameter groups and learning-rate schedules.

Weight decay rule (documented choice): decay applies to every parameter of rank >= 2
(linear/conv weights, the head's class weights W) and to nothing else. Skipped:
- the parameters the head names in ``head.no_decay_parameters()`` (e.g. the unified bias
  b of bce-u, SPEC §2.7: decaying b would pull the learned threshold towards 0),
- every bias and every normalisation scale/shift (all 1-D and 0-D parameters): decaying
  them does not regularise the function class and destabilises BatchNorm.

Schedules are per *step* (warm-up needs step resolution on short runs): linear warm-up
from lr/warmup_steps to lr over ``warmup_epochs`` epochs, then
- cosine: lr · ½(1 + cos(π · progress)) down to 0 at the last step,
- multistep: lr · gamma^(number of milestones (epochs) passed),
- constant: lr.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, head: nn.Module, weight_decay: float,
                     head_prefix: str = "head.") -> list[dict]:
    """Split ``model``'s trainable parameters into a decayed and a non-decayed group.

    ``head`` must be the sub-module registered at ``head_prefix`` inside ``model``.
    """
    head_skip = {head_prefix + n for n in head.no_decay_parameters()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in head_skip or p.ndim < 2:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def no_decay_parameter_names(model: nn.Module, head: nn.Module,
                             head_prefix: str = "head.") -> list[str]:
    """Names of ``model``'s parameters that get no weight decay (for docs and tests)."""
    head_skip = {head_prefix + n for n in head.no_decay_parameters()}
    return [n for n, p in model.named_parameters()
            if p.requires_grad and (n in head_skip or p.ndim < 2)]


def build_optimizer(groups: list[dict], name: str, lr: float, momentum: float = 0.9,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW (betas (momentum, 0.999)).

    Both use torch's multi-tensor (``foreach``) update, the default on CUDA: on CPU it is
    the same per-element arithmetic as the default per-parameter loop, bit for bit
    (tests/train/test_optim.py), in a few ops over all parameters instead of several per
    parameter (cnn1d + lmdl, batch 128: 8.2 -> 6.2 ms per SGD step, docs/benchmarks.md). ``fused=True`` would be faster still but is not bit-identical.
    """
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum,
                               nesterov=bool(nesterov) and momentum > 0, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum if momentum else 0.9, 0.999),
                                 foreach=True)
    raise ValueError(f"optimizer: expected 'sgd' or 'adamw', got {name!r}")


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str,
              steps_per_epoch: int, milestones=(), gamma: float = 0.1) -> float:
    """Multiplier of the base lr for optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        epoch = step // max(1, steps_per_epoch)
        return gamma ** sum(1 for m in milestones if epoch >= m)
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule: expected 'cosine', 'multistep' or 'constant', got {schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
                    schedule: str, warmup_epochs: float, milestones=(), gamma: float = 0.1
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR; its state (step count) round-trips through ``state_dict``."""
    total = epochs * steps_per_epoch
    warmup = min(total, int(round(warmup_epochs * steps_per_epoch)))
    milestones = tuple(milestones or ())

    def factor(step: int) -> float:
        return lr_factor(step, total_steps=total, warmup_steps=warmup, schedule=schedule,
                         steps_per_epoch=steps_per_epoch, milestones=milestones, gamma=gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
