"""Backbones that map inputs to features (DESIGN.md "models"); the head is separate.

``build_model(name, in_shape, feat_dim)`` returns an ``nn.Module`` whose output is the
(B, feat_dim) feature of a final ``nn.Linear`` with no activation after it, so the head
sees unconstrained features (SPEC §2). Models: mlp, cnn, cnn1d, resnet18 (docs/models.md),
or your own as ``"package.module:factory"`` with ``factory(in_shape, feat_dim) -> nn.Module``.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from .cnn import CNN
from .cnn1d import CNN1D
from .mlp import MLP
from .resnet import ResNet18

__all__ = ["build_model", "check_model_name", "list_models", "default_model", "MLP", "CNN", "CNN1D", "ResNet18"]

_MODELS = {"mlp": MLP, "cnn": CNN, "cnn1d": CNN1D, "resnet18": ResNet18}


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_MODELS)


def _factory(name: str):
    """The callable behind an entry point ``"package.module:factory"`` (ValueError naming it)."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ValueError(f"model {name!r}: an entry point must read 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise ValueError(f"model {name!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from exc
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"model {name!r}: module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"model {name!r}: {attr!r} is not callable (expected factory(in_shape, feat_dim) -> nn.Module)")
    return factory


def check_model_name(name) -> str:
    """Validate a model name before training: a built-in name, or an importable entry point.

    Returns ``name``; raises ValueError listing the built-ins or naming the import problem.
    """
    if isinstance(name, str) and ":" in name:
        _factory(name)
        return name
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(
            f"unknown model {name!r}; valid models: {', '.join(list_models())}, or 'package.module:factory'"
        )
    return name


def build_model(name: str, in_shape, feat_dim: int) -> nn.Module:
    """Backbone ``name`` for inputs of shape ``in_shape`` (one sample, channels first).

    ``name`` is a built-in (``list_models()``) or an entry point ``"package.module:factory"``
    where ``factory(in_shape, feat_dim) -> nn.Module`` maps a batch (B, *in_shape) to features
    (B, feat_dim). An entry point's module is checked with a dummy batch of two zero inputs
    (eval mode, no gradient, then the module's training mode is restored, so no state
    changes). Raises ValueError for an unknown name (listing the valid ones), an import
    failure, a missing attribute, a factory that does not return an nn.Module, a wrong output
    shape, or an ``in_shape`` a built-in model cannot take.
    """
    check_model_name(name)
    if ":" not in name:
        return _MODELS[name](in_shape, feat_dim)
    shape = tuple(int(s) for s in in_shape)
    try:
        model = _factory(name)(shape, feat_dim)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"model {name!r}: factory({shape}, {feat_dim}) failed ({type(exc).__name__}: {exc})") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r}: the factory returned {type(model).__name__}, expected a torch.nn.Module")
    _check_output(name, model, shape, feat_dim)
    return model


def _check_output(name: str, model: nn.Module, shape: tuple[int, ...], feat_dim: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2,) + shape))
    except Exception as exc:
        raise ValueError(
            f"model {name!r}: forward of a dummy batch of shape {(2,) + shape} failed ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, feat_dim):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"model {name!r}: a batch of shape {(2,) + shape} gave output {got}; expected features of shape (2, {feat_dim})"
        )


def default_model(dataset_name: str) -> str:
    """The backbone used for ``dataset_name`` when none is given: the ``default_model`` the
    dataset registered (``unimargin.data.register_dataset``); ValueError for an unknown dataset."""
    from unimargin.data import dataset_info  # data registers datasets; models only reads them

    return dataset_info(dataset_name).default_model
