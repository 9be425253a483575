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
    with pytest.raises(ValueError, match="unknown model 'vgg'.*cnn, cnn1d, mlp, resnet18, or 'package.module:factory'"):
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


# ------------------------------------------------------------------ own backbones (issue 12)
FACTORIES = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, in_shape, feat_dim):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(in_shape).prod()), feat_dim)
        self.bn = nn.BatchNorm1d(feat_dim)

    def forward(self, x):
        return self.bn(self.fc(x.flatten(1)))

def build(in_shape, feat_dim):
    return Net(in_shape, feat_dim)

def wrong_dim(in_shape, feat_dim):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(feat_dim + 1))

def not_a_module(in_shape, feat_dim):
    return "resnet"

def crashes(in_shape, feat_dim):
    raise RuntimeError("boom")

def bad_forward(in_shape, feat_dim):
    return nn.Linear(3, feat_dim)

class Zoo:
    small = staticmethod(build)

answer = 42
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "my_backbones.py").write_text(FACTORIES)
    (tmp_path / "broken_backbones.py").write_text("import does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_backbones"


def test_entry_point_builds_and_is_left_in_training_mode(factories):
    from unimargin.models import check_model_name

    torch.manual_seed(0)
    model = build_model(f"{factories}:build", (1, 4, 5), 6)
    assert model.training and model(torch.randn(3, 1, 4, 5)).shape == (3, 6)
    assert int(model.bn.num_batches_tracked) == 1  # the dummy check batch did not update BatchNorm
    assert build_model(f"{factories}:Zoo.small", [7], 2)(torch.randn(2, 7)).shape == (2, 2)
    assert check_model_name(f"{factories}:build") == f"{factories}:build" and check_model_name("mlp") == "mlp"


@pytest.mark.parametrize(
    "target,match",
    [
        ("no_such_module_xyz:build", r"cannot import module 'no_such_module_xyz' \(ModuleNotFoundError"),
        ("broken_backbones:build", r"cannot import module 'broken_backbones' \(ModuleNotFoundError.*does_not_exist"),
        ("{m}:missing", r"module 'my_backbones' has no attribute 'missing'"),
        ("{m}:answer", r"'answer' is not callable"),
        ("{m}:wrong_dim", r"gave output \(2, 7\); expected features of shape \(2, 6\)"),
        ("{m}:not_a_module", r"the factory returned str, expected a torch.nn.Module"),
        ("{m}:crashes", r"factory\(\(1, 4, 5\), 6\) failed \(RuntimeError: boom\)"),
        ("{m}:bad_forward", r"forward of a dummy batch of shape \(2, 1, 4, 5\) failed"),
        (":build", r"must read 'package.module:factory'"),
        ("{m}:", r"must read 'package.module:factory'"),
    ],
)
def test_entry_point_errors_are_clear(factories, target, match):
    with pytest.raises(ValueError, match=match):
        build_model(target.format(m=factories), (1, 4, 5), 6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length", [40, 41, 2, 3])
def test_pair_max_pool_equals_max_pool1d_in_values_and_gradient(dtype, length):
    """cnn1d's PairMaxPool1d is MaxPool1d(2) bit for bit, ties included (ReLU zeros, repeats)."""
    from unimargin.models.cnn1d import PairMaxPool1d

    gen = torch.Generator().manual_seed(length)
    x = torch.relu(torch.randn(5, 3, length, generator=gen, dtype=dtype))
    x[0, 0, :2] = 0.5                                   # a tie at a positive value
    grad = torch.randn(5, 3, length // 2, generator=gen, dtype=dtype)
    results = []
    for pool in (torch.nn.MaxPool1d(2), PairMaxPool1d()):
        xi = x.clone().requires_grad_()
        y = pool(xi)
        y.backward(grad)
        results.append((y, xi.grad))
    (y_ref, g_ref), (y, g) = results
    assert y.shape == y_ref.shape and torch.equal(y, y_ref) and torch.equal(g, g_ref)


def test_cnn1d_trains_exactly_as_with_max_pool1d():
    """Swapping PairMaxPool1d back to nn.MaxPool1d(2) changes no bit of 5 SGD steps."""
    import copy

    from unimargin.models.cnn1d import CNN1D, PairMaxPool1d

    torch.manual_seed(0)
    ours = CNN1D((1, 40), 16)
    theirs = copy.deepcopy(ours)
    for i, layer in enumerate(theirs.body):
        if isinstance(layer, PairMaxPool1d):
            theirs.body[i] = torch.nn.MaxPool1d(2)
    assert sum(isinstance(m, PairMaxPool1d) for m in ours.modules()) == 2
    x, y = torch.randn(32, 1, 40), torch.randint(0, 16, (32,))
    for model in (ours, theirs):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name
