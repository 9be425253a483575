"""unimargin: large-margin discriminative (LMDL) and unified-threshold (BCE-u) losses.

Public API (DESIGN.md, "Public API contract"):

- :func:`build_head`, :func:`list_heads`, :func:`register_head`, :class:`Head`, :class:`HeadOutput`
- :mod:`unimargin.metrics`, :mod:`unimargin.data`, :mod:`unimargin.models`

Sub-packages are imported lazily so that ``import unimargin`` stays cheap and the optional
extras (matplotlib, tqdm, ...) are only needed by the parts that use them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY_ATTRS = {
    "build_head": "unimargin.heads",
    "list_heads": "unimargin.heads",
    "register_head": "unimargin.heads",
    "Head": "unimargin.heads",
    "HeadOutput": "unimargin.heads",
}
_LAZY_MODULES = {"heads", "metrics", "data", "models", "train", "report", "distributed"}

__all__ = ["__version__", *_LAZY_ATTRS, *sorted(_LAZY_MODULES)]


def __getattr__(name: str):
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"unimargin.{name}")
    raise AttributeError(f"module 'unimargin' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
