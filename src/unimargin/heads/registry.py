"""Head registry: ``build_head(name, num_classes, feat_dim, **hparams)`` and ``list_heads()``."""

from __future__ import annotations

import inspect

from .base import Head
from .bce import BCEDiverseHead, BCEUnifiedHead
from .center import CenterHead
from .lmdl import LMDLHead
from .normalized import ArcFaceHead, CosFaceHead, NormFaceHead
from .softmax import SoftmaxHead

_HEADS: dict[str, type[Head]] = {
    cls.name: cls
    for cls in (SoftmaxHead, NormFaceHead, CosFaceHead, ArcFaceHead, CenterHead, LMDLHead,
                BCEUnifiedHead, BCEDiverseHead)
}


def list_heads() -> list[str]:
    """Names accepted by :func:`build_head`, in DESIGN.md order."""
    return list(_HEADS)


def head_hparams(name: str) -> dict[str, object]:
    """Hyper-parameter names of head ``name`` and their defaults (DESIGN.md table)."""
    cls = _lookup(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, K, d
    return {p.name: p.default for p in params}


def _lookup(name: str) -> type[Head]:
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; valid heads: {', '.join(_HEADS)}")
    return _HEADS[name]


def build_head(name: str, num_classes: int, feat_dim: int, **hparams) -> Head:
    """Build head ``name`` for ``num_classes`` classes and ``feat_dim``-d features.

    Unknown names or hyper-parameters raise ValueError listing the valid ones; invalid
    values raise ValueError naming the hyper-parameter.
    """
    cls = _lookup(name)
    valid = head_hparams(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) {unknown} for head {name!r}; "
            f"valid: {', '.join(valid) if valid else '(none)'}"
        )
    return cls(num_classes, feat_dim, **hparams)
