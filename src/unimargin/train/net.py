"""The network wrapper: input standardisation + backbone + head as one ``nn.Module``.

DistributedDataParallel wraps this one module, so head parameters (e.g. the bce-u bias)
are synchronised like any other. ``net(x)`` returns features — the contract every
evaluation relies on (:func:`unimargin.metrics.evaluate.compute_outputs`), the same as a
bare backbone's — so nothing duck-types on attribute names.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from unimargin import distributed as udist

from .config import TrainConfig


class UnimarginNet(nn.Module):
    """Input standardisation + backbone + head as one module.

    ``forward(x)`` returns features; ``forward(x, labels)`` returns
    ``(features, HeadOutput)`` — or ``(features, None)`` when the divergence guard found
    non-finite or exploding features (checked *before* the head, whose input validation
    would otherwise raise, and agreed on by all processes so none hangs in a collective).
    With ``bf16=True`` (or ``fp16=True``, meant for CUDA with the engine's gradient
    scaler) the backbone runs under bfloat16 (float16) autocast; features are cast back to
    float32 and the head's loss maths runs in float32 (the head disables autocast). With
    ``channels_last=True`` 4-D inputs are handed to the backbone in channels-last memory
    format (faster 2-D convolutions on CPU; the same maths, not bit-identical).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None, bf16: bool = False,
                 max_feature_norm: float = math.inf, fp16: bool = False,
                 channels_last: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("input_mean", None if mean is None else mean.clone().float())
        self.register_buffer("input_std", None if std is None else std.clone().float())
        if bf16 and fp16:
            raise ValueError("bf16 and fp16 are mutually exclusive")
        self.bf16 = bool(bf16)
        self.autocast_dtype = torch.bfloat16 if bf16 else (torch.float16 if fp16 else None)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.max_feature_norm = float(max_feature_norm)
        self.last_feature_norm = 0.0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_mean is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x = (x - self.input_mean.view(shape)) / self.input_std.view(shape)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
                f = self.backbone(x)
        else:
            f = self.backbone(x)
        return f.float()

    def feature_guard(self, f: torch.Tensor) -> bool:
        """True when every process's features are finite and within max_feature_norm."""
        with torch.no_grad():
            if f.numel():
                norm = torch.linalg.vector_norm(f.detach(), dim=1).max()
            else:
                norm = torch.zeros((), device=f.device)
            norm = torch.where(torch.isfinite(norm), norm, torch.full_like(norm, math.inf))
            if udist.is_distributed():
                dist.all_reduce(norm, op=dist.ReduceOp.MAX)
            self.last_feature_norm = float(norm)
        return self.last_feature_norm <= self.max_feature_norm

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        f = self.embed(x)
        if labels is None:
            return f
        if not self.feature_guard(f):
            return f, None
        return f, self.head(f, labels)


def build_net(cfg: TrainConfig, in_shape, num_classes: int, mean=None, std=None,
              build_backbone: Callable | None = None) -> UnimarginNet:
    """Backbone (``unimargin.models.build_model`` or ``build_backbone(in_shape, feat_dim)``)
    + head (``unimargin.heads.build_head``) for a resolved config."""
    from unimargin.heads import build_head

    if build_backbone is None:
        from unimargin.models import build_model

        backbone = build_model(cfg.model, tuple(in_shape), cfg.feat_dim)
    else:
        backbone = build_backbone(tuple(in_shape), cfg.feat_dim)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"model {cfg.model!r}: the factory returned {type(backbone).__name__}, "
                        f"expected a torch.nn.Module")
    meta = [name for name, t in [*backbone.named_parameters(), *backbone.named_buffers()] if t.is_meta]
    if meta:
        raise ValueError(f"model {cfg.model!r}: parameters on the meta device (no data), e.g. "
                         f"{meta[0]!r}; the factory must return a model with real weights "
                         f"(call to_empty() and initialise or load them)")
    head = build_head(cfg.head, num_classes, cfg.feat_dim, **cfg.head_params)
    return UnimarginNet(backbone, head, mean, std, bf16=cfg.bf16, fp16=cfg.fp16,
                        max_feature_norm=cfg.max_feature_norm,
                        channels_last=uses_channels_last(cfg, backbone, in_shape))


def uses_channels_last(cfg, backbone: nn.Module, in_shape) -> bool:
    """``cfg.channels_last``; None (auto) = on for image inputs into a model with 2-D
    convolutions."""
    if cfg.channels_last is not None:
        return bool(cfg.channels_last)
    return len(tuple(in_shape)) == 3 and any(isinstance(m, nn.Conv2d) for m in backbone.modules())
