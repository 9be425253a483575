"""Batched tensor transforms (torch only, no torchvision).

All functions act on a whole batch at once. Standardisation (:func:`feature_stats`,
:func:`normalize`) takes any layout: ``(N, d)`` tabular features are standardised per
feature, ``(N, C, L)`` / ``(N, C, H, W)`` per channel. The augmentations take ``(N, C, L)``
or ``(N, C, H, W)``; their randomness comes from an explicit ``torch.Generator`` so
augmentation is reproducible from the training seed.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .registry import dataset_info, layout_of

__all__ = ["feature_stats", "normalize", "random_crop", "random_horizontal_flip", "crop_flip",
           "default_augmentation"]


def _check_batch(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4):
        raise ValueError(f"{name} must have shape (N, C, L) or (N, C, H, W), got {tuple(x.shape)}")


def feature_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-set standardisation statistics: (mean, std), each of shape (x.shape[1],).

    Tabular x (N, d): per feature j, mean_j = mean_n x[n,j], std_j = sqrt(mean_n (x[n,j] -
    mean_j)^2). Signals and images (N, C, ...): per channel c over samples and positions.
    Population std, computed in float64 (large image sets keep their precision). A constant
    feature or channel (std = 0) gets std 1, so standardising only centres it: no division
    by zero, no NaN. Compute on the training split only.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    layout_of(x)  # (N, d), (N, C, L) or (N, C, H, W)
    if x.shape[0] == 0:
        raise ValueError("feature_stats: x is empty")
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)
    mean = flat.mean(dim=1)
    std = flat.var(dim=1, unbiased=False).sqrt()
    std = torch.where(std > _STD_EPS * mean.abs().clamp(min=1.0), std, torch.ones_like(std))
    return mean.to(x.dtype), std.to(x.dtype)


# relative std below which a feature counts as constant (float64 round-off of a constant
# column is ~1e-16 of its magnitude; real features are far above 1e-12)
_STD_EPS = 1e-12


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(x - mean) / std per feature ((N, d)) or per channel ((N, C, ...)); std <= eps -> 1."""
    layout_of(x)
    mean, std = torch.as_tensor(mean, dtype=x.dtype), torch.as_tensor(std, dtype=x.dtype)
    if mean.shape != (x.shape[1],) or std.shape != (x.shape[1],):
        raise ValueError(f"normalize: mean/std must have shape ({x.shape[1]},), got {tuple(mean.shape)}/{tuple(std.shape)}")
    view = (1, -1) + (1,) * (x.dim() - 2)
    std = torch.where(std > eps, std, torch.ones_like(std))
    return (x - mean.view(view)) / std.view(view)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad every spatial side by ``padding`` and cut a random window of the original size.

    Each sample gets its own offset, uniform in 0..2*padding per spatial axis; the window is
    gathered with one advanced-indexing call (no loop over samples).
    """
    _check_batch(x)
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"random_crop: padding must be a non-negative int, got {padding!r}")
    if padding == 0 or x.shape[0] == 0:
        return x.clone()
    n, spatial = x.shape[0], x.shape[2:]
    padded = F.pad(x, (padding,) * (2 * len(spatial)))
    offsets = torch.randint(0, 2 * padding + 1, (n, len(spatial)), generator=generator)
    batch = torch.arange(n)
    if len(spatial) == 1:
        cols = offsets[:, 0:1] + torch.arange(spatial[0])  # (N, L)
        return padded[batch[:, None], :, cols].permute(0, 2, 1).contiguous()
    rows = offsets[:, 0:1] + torch.arange(spatial[0])  # (N, H)
    cols = offsets[:, 1:2] + torch.arange(spatial[1])  # (N, W)
    out = padded[batch[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_horizontal_flip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Reverse the last axis of each sample independently with probability ``p``."""
    _check_batch(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_horizontal_flip: p must be in [0, 1], got {p!r}")
    flip = torch.rand(x.shape[0], generator=generator) < p
    return torch.where(flip.view((-1,) + (1,) * (x.dim() - 1)), x.flip(-1), x)


def crop_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The standard CIFAR training augmentation: pad-4 random crop, then a random horizontal flip."""
    return random_horizontal_flip(random_crop(x, 4, generator), generator)


def default_augmentation(name: str) -> Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None:
    """The training augmentation dataset ``name`` registered (``register_dataset(augmentation=...)``).

    Built-ins: :func:`crop_flip` for cifar10/cifar100; None for the others (flips change the
    meaning of digits and 1-D signals; tabular features have no spatial axes).
    """
    return dataset_info(name).augmentation
