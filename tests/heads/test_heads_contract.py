"""The Head contract (DESIGN.md, contract.md): registry, attributes, bad input, empty
batches, state_dict round trips, predict / threshold semantics."""

import io
import warnings

import pytest
import torch

from unimargin import Head, HeadOutput, build_head, list_heads
from unimargin.heads import head_hparams

NAMES = ["softmax", "normface", "cosface", "arcface", "center", "lmdl", "bce-u", "bce-d"]
K, D = 4, 3


def test_list_heads_and_hparam_names_match_design():
    # built-ins first, in DESIGN.md order (test modules may register toy heads after them)
    assert list_heads()[:len(NAMES)] == NAMES
    assert head_hparams("softmax") == {"bias": True}
    assert head_hparams("normface") == {"scale": 16.0}
    assert head_hparams("cosface") == {"scale": 16.0, "margin": 0.35}
    assert head_hparams("arcface") == {"scale": 16.0, "margin": 0.5}
    assert head_hparams("center") == {"center_weight": 0.01, "center_lr": 0.5, "bias": True}
    assert head_hparams("lmdl") == {
        "delta_v": 0.5, "delta_d": 1.5, "compact_weight": 1.0, "margin_weight": 1.0,
        "reg_weight": 0.001, "momentum": 0.99, "disc_weight": 1.0, "aggregation": "max", "bias": True}
    bce = {"normalize": False, "scale": 16.0, "margin": 0.0, "neg_weight": 1.0, "neg_rate": 1.0,
           "bias_init": None}
    assert head_hparams("bce-u") == bce and head_hparams("bce-d") == bce


@pytest.mark.parametrize("name", NAMES)
def test_attributes_and_output_types(name):
    head = build_head(name, K, D)
    assert isinstance(head, Head) and head.name == name
    assert head.num_classes == K and head.feat_dim == D
    assert isinstance(head.weight, torch.nn.Parameter) and head.weight.shape == (K, D)
    out = head(torch.randn(5, D), torch.tensor([0, 1, 2, 3, 0]))
    assert isinstance(out, HeadOutput) and out.loss.shape == () and out.logits.shape == (5, K)
    assert all(v.shape == () and not v.requires_grad for v in out.terms.values())
    assert head.scores(torch.randn(6, D)).shape == (6, K)
    assert head.predict(torch.randn(6, D)).dtype == torch.long


def test_weight_init_like_nn_linear():
    torch.manual_seed(11)
    lin = torch.nn.Linear(D, K)
    torch.manual_seed(11)
    head = build_head("softmax", K, D)
    assert torch.equal(head.weight, lin.weight) and torch.equal(head.bias, lin.bias)
    assert build_head("softmax", K, D, bias=False).bias is None


def test_unknown_name_and_hparam_list_valid_ones():
    with pytest.raises(ValueError, match="valid heads: softmax, normface.*bce-d"):
        build_head("lmdl2", K, D)
    with pytest.raises(ValueError, match="valid: scale$"):
        build_head("normface", K, D, margin=0.3)
    with pytest.raises(ValueError, match="'delta'.*valid: delta_v, delta_d"):
        build_head("lmdl", K, D, delta=1.0)


@pytest.mark.parametrize("name,hp,word", [
    ("cosface", {"margin": -0.1}, "margin"),
    ("arcface", {"margin": 3.5}, "margin"),
    ("arcface", {"scale": 0.0}, "scale"),
    ("center", {"center_lr": 1.5}, "center_lr"),
    ("center", {"center_weight": -1.0}, "center_weight"),
    ("lmdl", {"momentum": 1.0}, "momentum"),
    ("lmdl", {"momentum": -0.1}, "momentum"),
    ("lmdl", {"delta_v": -0.5}, "delta_v"),
    ("lmdl", {"aggregation": "sum"}, "aggregation"),
    ("lmdl", {"reg_weight": float("nan")}, "reg_weight"),
    ("lmdl", {"bias": "yes"}, "bias"),
    ("bce-u", {"neg_rate": 0.0}, "neg_rate"),
    ("bce-d", {"neg_rate": 1.5}, "neg_rate"),
    ("bce-u", {"margin": 0.3}, "normalize=True"),
    ("bce-u", {"normalize": True, "margin": -0.3}, "margin"),
    ("bce-u", {"neg_weight": -1}, "neg_weight"),
])
def test_invalid_hparam_values(name, hp, word):
    with pytest.raises(ValueError, match=word):
        build_head(name, K, D, **hp)


def test_bad_sizes_and_lmdl_delta_warning():
    with pytest.raises(ValueError, match="num_classes"):
        build_head("softmax", 1, D)
    with pytest.raises(TypeError, match="feat_dim"):
        build_head("softmax", K, 2.0)
    with pytest.warns(UserWarning, match="delta_d"):
        build_head("lmdl", K, D, delta_v=2.0, delta_d=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_head("lmdl", K, D)


BAD_INPUTS = [
    (lambda: (torch.randn(3, D), torch.tensor([0, 1, K])), ValueError, "labels must be in"),
    (lambda: (torch.randn(3, D), torch.tensor([0, -1, 2])), ValueError, "found label -1"),
    (lambda: (torch.randn(3, D), torch.tensor([0.0, 1.0, 2.0])), TypeError, "integer"),
    (lambda: (torch.randn(3, D), torch.tensor([True, False, True])), TypeError, "integer"),
    (lambda: (torch.randn(3, D + 1), torch.tensor([0, 1, 2])), ValueError, "width"),
    (lambda: (torch.randn(3, D), torch.tensor([0, 1])), ValueError, "batch sizes"),
    (lambda: (torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([0])), ValueError, "NaN"),
    (lambda: (torch.tensor([[0.0, float("inf"), 1.0]]), torch.tensor([0])), ValueError, "Inf"),
    (lambda: (torch.randn(3, D, 1), torch.tensor([0, 1, 2])), ValueError, "shape"),
    (lambda: (torch.randn(3, D), torch.tensor([[0, 1, 2]])), ValueError, "labels must be 1-d"),
    (lambda: (torch.randint(0, 3, (3, D)), torch.tensor([0, 1, 2])), TypeError, "floating"),
    (lambda: (torch.randn(3, D).numpy(), torch.tensor([0, 1, 2])), TypeError, "torch.Tensor"),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_raises(name, case):
    make, exc, msg = BAD_INPUTS[case]
    head = build_head(name, K, D)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    with pytest.raises(exc, match=msg):
        head(*make())
    for k, v in head.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("name", NAMES)
def test_scores_and_predict_validate_features(name):
    head = build_head(name, K, D)
    with pytest.raises(ValueError, match="width"):
        head.scores(torch.randn(2, D + 2))
    with pytest.raises(ValueError, match="NaN"):
        head.predict(torch.full((2, D), float("nan")))


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_zero_loss_connected_and_buffers_unchanged(name):
    head = build_head(name, K, D)
    head(torch.randn(6, D), torch.tensor([0, 1, 2, 3, 0, 1]))  # populate buffers
    before = {k: v.clone() for k, v in head.state_dict().items()}
    out = head(torch.zeros(0, D), torch.zeros(0, dtype=torch.long))
    assert out.loss.item() == 0.0 and out.loss.requires_grad and out.logits.shape == (0, K)
    out.loss.backward()
    for n, p in head.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), n
    for k, v in head.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(v.item() == 0.0 for v in out.terms.values())
    assert head.predict(torch.zeros(0, D)).shape == (0,)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_exact(name):
    head = build_head(name, K, D)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        head(torch.randn(8, D), torch.randint(0, K, (8,))).loss.backward()
        opt.step()
    buf = io.BytesIO()
    torch.save(head.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    clone = build_head(name, K, D)
    clone.load_state_dict(torch.load(buf))
    for (k, v), (k2, v2) in zip(head.state_dict().items(), clone.state_dict().items()):
        assert k == k2 and v.dtype == v2.dtype and torch.equal(v, v2)
    if name == "lmdl":
        assert {"centroids", "seen"} <= set(head.state_dict()) and bool(head.seen.any())
    if name == "center":
        assert "centers" in head.state_dict() and bool(head.centers.abs().sum() > 0)
    f, y = torch.randn(5, D), torch.randint(0, K, (5,))
    assert torch.equal(head(f, y).loss, clone(f, y).loss)
    assert torch.equal(head.state_dict().get("centroids", torch.zeros(1)),
                       clone.state_dict().get("centroids", torch.zeros(1)))


def test_bce_u_predict_rejects_when_max_score_not_above_bias():
    head = build_head("bce-u", 3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, 2))  # a = (f0, f1, 0)
        head.bias.fill_(0.5)
    f = torch.tensor([[0.9, 0.1], [0.2, 0.5], [0.1, 0.7], [-1.0, -2.0]])
    # max scores 0.9 (> b), 0.5 (== b -> rejected), 0.7 (> b), 0.0 (< b)
    assert head.predict(f).tolist() == [0, -1, 1, -1]
    assert head.predict(f, threshold=0.45).tolist() == [0, 1, 1, -1]
    assert head.predict(f, threshold=torch.tensor(-0.5)).tolist() == [0, 1, 1, 2]
    assert head.threshold.item() == 0.5


def test_bce_d_predict_uses_zero_and_ce_heads_are_closed_set_by_default():
    head = build_head("bce-d", 2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.copy_(torch.tensor([1.0, -1.0]))
    f = torch.tensor([[2.0, -3.0], [0.5, -1.5], [0.0, -1.0]])  # z = (f0 - 1, f1 + 1); max 1, -0.5, 0
    assert head.predict(f).tolist() == [0, -1, -1]
    soft = build_head("softmax", 3, 2)
    f = torch.randn(10, 2)
    assert torch.equal(soft.predict(f), soft.scores(f).argmax(1))
    s = soft.scores(f).detach()
    t = s.max(1).values.median()
    expected = torch.where(s.max(1).values > t, s.argmax(1), torch.tensor(-1))
    assert torch.equal(soft.predict(f, threshold=t), expected)


@pytest.mark.parametrize("name", ["softmax", "center", "lmdl", "bce-u", "bce-d"])
def test_linear_decision_reproduces_predictions(name):
    head = build_head(name, 5, 3)
    if head.bias is not None:
        with torch.no_grad():
            head.bias.normal_()
    f = torch.randn(50, 3)
    W, b = head.linear_decision()
    assert torch.equal((f @ W.T + b).argmax(1), head.scores(f).argmax(1))


def test_bf16_autocast_features_give_float32_loss():
    head = build_head("lmdl", K, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(6, D).bfloat16(), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert out.loss.dtype == torch.float32 and head.centroids.dtype == torch.float32
