"""Head registry: ``@register_head``, ``build_head``, ``list_heads``, ``recommended_settings``.

A head brings its own metadata: the decorator records the class under its name together
with the optimiser settings it trains well with, so adding a head touches one file (the
head's own) and it then works in ``train``, ``compare`` and ``sweep`` like the built-in ones
(docs/architecture.md, "Add a head").
"""

from __future__ import annotations

import inspect
from typing import Callable

from .base import Head

# Optimiser fields of TrainConfig that default to the head's recommended settings.
RECOMMENDED_KEYS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
                    "warmup_epochs")

# Measured on a small BatchNorm CNN and MNIST-1D (docs/training.md, "Recommended settings"):
# the cross-entropy family trains at SGD 0.05; lmdl's margin/compactness terms, the sum of K
# binary losses (bce) and arcface's angular margin give much larger early gradients and
# collapse or stall there, so they use 0.01 with a longer warm-up.
CE_FAMILY = dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                 schedule="cosine", warmup_epochs=1)
CAREFUL = dict(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
               schedule="cosine", warmup_epochs=2)

_HEADS: dict[str, type[Head]] = {}
_RECOMMENDED: dict[str, dict] = {}


def register_head(name: str, *, recommended: dict | None = None) -> Callable[[type], type]:
    """Class decorator: register a :class:`Head` subclass under ``name``.

    ``recommended`` holds optimiser settings (any of :data:`RECOMMENDED_KEYS`; missing keys
    take the cross-entropy family's values) used for every optimiser option a run leaves
    unset. Duplicate names and classes that are not Heads raise ValueError / TypeError.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_head: name must be a non-empty string, got {name!r}")
    settings = dict(CE_FAMILY)
    if recommended is not None:
        unknown = sorted(set(recommended) - set(RECOMMENDED_KEYS))
        if unknown:
            raise ValueError(f"register_head({name!r}): unknown recommended setting(s) "
                             f"{unknown}; valid: {', '.join(RECOMMENDED_KEYS)}")
        settings.update(recommended)

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Head)):
            raise TypeError(f"register_head({name!r}): expected a subclass of "
                            f"unimargin.heads.Head, got {cls!r}")
        if name in _HEADS and _HEADS[name] is not cls:
            raise ValueError(f"register_head: a head named {name!r} is already registered "
                             f"({_HEADS[name].__module__}.{_HEADS[name].__qualname__})")
        cls.name = name
        _HEADS[name] = cls
        _RECOMMENDED[name] = settings
        return cls

    return decorator


def list_heads() -> list[str]:
    """Names accepted by :func:`build_head`, in registration order (built-ins first)."""
    return list(_HEADS)


def _lookup(name: str) -> type[Head]:
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; valid heads: {', '.join(_HEADS)}")
    return _HEADS[name]


def recommended_settings(name: str) -> dict:
    """Optimiser settings (optimizer, lr, momentum, nesterov, weight_decay, schedule,
    warmup_epochs) registered with head ``name``."""
    _lookup(name)
    return dict(_RECOMMENDED[name])


def head_hparams(name: str) -> dict[str, object]:
    """Hyper-parameter names of head ``name`` and their defaults (DESIGN.md table)."""
    cls = _lookup(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, K, d
    return {p.name: p.default for p in params}


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
