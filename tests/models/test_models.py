"""Backbones: output shape, gradient flow to the first layer, the final Linear, bad input."""

import functools

import pytest
import torch
from torch import nn

from unimargin.models import build_model, default_model, list_models

CASES = [
    ("mlp", (1, 8, 8)),
    ("mlp", (5,)),
    ("cnn", (1, 28, 28)),
    ("cnn", (3, 32, 32)),
    ("cnn", (1, 8, 8)),
    ("cnn1d", (1, 40)),
    ("resnet18", (3, 32, 32)),
    ("resnet18", (1, 16, 16)),
]


@functools.lru_cache(maxsize=None)
def _model(name, in_shape):
    """Built once per case: constructing resnet18 dominates these tests' run time."""
    torch.manual_seed(0)
    return build_model(name, in_shape, 12)


def test_list_models():
    assert list_models() == ["cnn", "cnn1d", "mlp", "resnet18"]


@pytest.mark.parametrize("name,in_shape", CASES)
def test_output_shape_and_gradients_reach_first_layer(name, in_shape):
    model = _model(name, in_shape).train()
    model.zero_grad(set_to_none=True)
    x = torch.randn(2, *in_shape)
    out = model(x)
    assert out.shape == (2, 12) and out.dtype == torch.float32
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)))
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))][-1]
    assert isinstance(last, nn.Linear) and last.out_features == 12
    out.pow(2).sum().backward()
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name,in_shape", CASES)
def test_no_activation_after_last_linear(name, in_shape):
    """Features can be negative: the final Linear is not followed by ReLU (checked numerically)."""
    model = _model(name, in_shape).eval()
    captured = {}
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    last.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    out = model(torch.randn(4, *in_shape))
    assert torch.equal(out, captured["out"]) and (out < 0).any()


def test_eval_mode_is_deterministic_per_sample():
    model = build_model("cnn", (1, 28, 28), 4).eval()
    x = torch.randn(5, 1, 28, 28)
    assert torch.allclose(model(x)[2:3], model(x[2:3]), atol=1e-5)


def test_unknown_model_lists_valid():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*cnn, cnn1d, mlp, resnet18"):
        build_model("vgg", (3, 32, 32), 8)


@pytest.mark.parametrize(
    "name,in_shape",
    [("cnn", (1, 40)), ("cnn", (3, 2, 2)), ("cnn1d", (1, 28, 28)), ("cnn1d", (1, 2)), ("resnet18", (3, 32)),
     ("mlp", ()), ("mlp", (0, 3)), ("cnn", "abc")],
)
def test_bad_in_shape(name, in_shape):
    with pytest.raises(ValueError, match=f"{name}: "):
        build_model(name, in_shape, 8)


@pytest.mark.parametrize("feat_dim", [0, -1, 2.5, True])
def test_bad_feat_dim(feat_dim):
    with pytest.raises(ValueError, match="feat_dim"):
        build_model("mlp", (4,), feat_dim)


def test_default_model_reads_the_dataset_registry():
    expected = {"mnist1d": "cnn1d", "fashion-mnist": "cnn", "digits": "mlp", "cifar10": "resnet18",
                "cifar100": "resnet18", "npz": "mlp", "folder": "cnn"}
    assert {k: default_model(k) for k in expected} == expected
    from unimargin.data import dataset_info, list_datasets

    # no second table: every registered dataset has one, and it is the registry's value
    assert all(default_model(d) == dataset_info(d).default_model for d in list_datasets())
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; valid datasets: .*mnist1d"):
        default_model("imagenet")


@pytest.mark.parametrize("name,in_shape", CASES)
def test_no_backbone_attribute_named_features(name, in_shape):
    """Nothing may duck-type on ``.features`` (issue 10): backbones name their trunk ``body``."""
    model = _model(name, in_shape)
    assert not any(n.split(".")[-1] == "features" for n, _ in model.named_modules())
    assert not hasattr(model, "features")
