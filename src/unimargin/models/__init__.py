"""Backbones that map inputs to features (DESIGN.md "models"); the head is separate.

``build_model(name, in_shape, feat_dim)`` returns an ``nn.Module`` whose output is the
(B, feat_dim) feature of a final ``nn.Linear`` with no activation after it, so the head
sees unconstrained features (SPEC §2). Models: mlp, cnn, cnn1d, resnet18 (docs/models.md).
"""

from __future__ import annotations

from torch import nn

from .cnn import CNN
from .cnn1d import CNN1D
from .mlp import MLP
from .resnet import ResNet18

__all__ = ["build_model", "list_models", "default_model", "MLP", "CNN", "CNN1D", "ResNet18"]

_MODELS = {"mlp": MLP, "cnn": CNN, "cnn1d": CNN1D, "resnet18": ResNet18}


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_MODELS)


def build_model(name: str, in_shape, feat_dim: int) -> nn.Module:
    """Backbone ``name`` for inputs of shape ``in_shape`` (one sample, channels first).

    Raises ValueError for an unknown name (listing the valid ones) or an ``in_shape`` the
    model cannot take (e.g. a 2-D image shape for cnn1d).
    """
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return _MODELS[name](in_shape, feat_dim)


def default_model(dataset_name: str) -> str:
    """The backbone used for ``dataset_name`` when none is given: the ``default_model`` the
    dataset registered (``unimargin.data.register_dataset``); ValueError for an unknown dataset."""
    from unimargin.data import dataset_info  # data registers datasets; models only reads them

    return dataset_info(dataset_name).default_model
