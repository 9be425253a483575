"""Input-shape checks shared by the backbones."""

from __future__ import annotations


def check_in_shape(in_shape, ndim: int | None, model: str, min_size: int = 1) -> tuple[int, ...]:
    """Validate ``in_shape`` (one sample's shape, channels first) and return it as a tuple."""
    if isinstance(in_shape, (str, bytes)):
        raise ValueError(f"{model}: in_shape must be a sequence of ints, got {in_shape!r}")
    try:
        shape = tuple(int(s) for s in in_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{model}: in_shape must be a sequence of ints, got {in_shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"{model}: in_shape must be non-empty with positive sizes, got {in_shape!r}")
    if ndim is not None and len(shape) != ndim:
        layout = {2: "(channels, length)", 3: "(channels, height, width)"}[ndim]
        raise ValueError(f"{model}: in_shape must be {layout}, got {in_shape!r}")
    if ndim is not None and any(s < min_size for s in shape[1:]):
        raise ValueError(f"{model}: spatial sizes must be >= {min_size}, got in_shape {in_shape!r}")
    return shape


def check_feat_dim(feat_dim, model: str) -> int:
    if isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim <= 0:
        raise ValueError(f"{model}: feat_dim must be a positive int, got {feat_dim!r}")
    return feat_dim
