"""Input validation shared by the metric functions (bad input -> clear error, never NaN)."""

from __future__ import annotations

import torch


def as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.is_meta:
            raise ValueError(f"{name} is a meta-device tensor (a shape without data); pass "
                             f"real values (e.g. materialise the model with to_empty() and "
                             f"load its weights first)")
        # metrics run on CPU (a no-op for CPU tensors; one copy for accelerator tensors)
        return x.detach().cpu()
    try:
        return torch.as_tensor(x)
    except Exception as exc:  # pragma: no cover - message only
        raise TypeError(f"{name} must be a tensor or array-like, got {type(x).__name__}") from exc


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise ValueError if ``t`` holds NaN or ±Inf.

    Fast path: a finite sum proves every element finite (any NaN/Inf makes the sum
    non-finite); only a non-finite sum (NaN/Inf, or float overflow) pays the exact check.
    """
    if t.numel() == 0:
        return
    if torch.isfinite(t.sum()):
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(bad.sum()) - n_nan
        raise ValueError(
            f"{name} must be finite, found {n_nan} NaN and {n_inf} Inf value(s) "
            f"(shape {tuple(t.shape)})"
        )


def check_matrix(x, name: str, min_cols: int = 1) -> torch.Tensor:
    """A finite floating 2-D tensor (N, C) with C >= min_cols."""
    t = as_tensor(x, name)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, {'K' if name.endswith('scores') else 'd'}), "
                         f"got shape {tuple(t.shape)}")
    if t.shape[1] < min_cols:
        raise ValueError(f"{name} must have at least {min_cols} column(s), got shape {tuple(t.shape)}")
    return _finite_real(t, name)


def check_vector(x, name: str) -> torch.Tensor:
    """A finite floating 1-D tensor."""
    t = as_tensor(x, name)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(t.shape)}")
    return _finite_real(t, name)


def check_labels(labels, n: int, num_classes: int | None, name: str = "labels",
                 data_name: str = "scores") -> torch.Tensor:
    """A 1-D int64 tensor of length ``n`` with values in [0, num_classes)."""
    y = as_tensor(labels, name)
    if y.dim() != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(y.shape)}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"{name} must be an integer tensor (class indices), got dtype {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has length {y.shape[0]} but {data_name} has {n} rows")
    y = y.to(torch.long)
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            bound = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
            raise ValueError(f"{name} must lie in {bound}, found values in [{lo}, {hi}]")
    return y


def check_nonempty(n: int, name: str) -> None:
    if n == 0:
        raise ValueError(f"{name} is empty: at least one sample is needed")


def _finite_real(t: torch.Tensor, name: str) -> torch.Tensor:
    """Reject bool/complex dtypes, promote integers to float64, reject NaN/Inf."""
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be a real-valued tensor, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    check_finite(t, name)
    return t
