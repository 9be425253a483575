"""softmax, normalized heads and BCE heads against written-out formulas (SPEC §2.1–2.4,
§2.7, §2.8), arcface fallback, extreme BCE logits, gradchecks."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from heads_reference import bce_reference, ce_written_out, cosines, normalized_ce_reference
from unimargin import build_head
from unimargin.heads import bce_loss


def _data(B=7, K=5, d=4, seed=3):
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(B, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=gen)
    return f, y


@pytest.mark.parametrize("bias", [True, False])
def test_softmax(bias):
    f, y = _data()
    head = build_head("softmax", 5, 4, bias=bias).double()
    out = head(f, y)
    z = f @ head.weight.T + (head.bias if bias else 0)
    torch.testing.assert_close(out.loss, ce_written_out(z, y))
    torch.testing.assert_close(head.scores(f), z)
    assert head.threshold is None and head.no_decay_parameters() == []
    W, b = head.linear_decision()
    torch.testing.assert_close(f @ W.T + b, z)


@pytest.mark.parametrize("kind,hp", [
    ("normface", {"scale": 10.0}),
    ("cosface", {"scale": 12.0, "margin": 0.25}),
    ("arcface", {"scale": 20.0, "margin": 0.6}),
])
def test_normalized_heads(kind, hp):
    f, y = _data()
    head = build_head(kind, 5, 4, **hp).double()
    out = head(f, y)
    ref = normalized_ce_reference(f, y, head.weight.detach(), hp["scale"], hp.get("margin", 0.0), kind)
    torch.testing.assert_close(out.loss, ref)
    # scores and logits carry no margin (SPEC §2.3, §2.4)
    torch.testing.assert_close(head.scores(f), hp["scale"] * cosines(f, head.weight.detach()))
    torch.testing.assert_close(out.logits.detach(), head.scores(f).detach())
    assert head.linear_decision() is None and head.bias is None and head.threshold is None


def test_arcface_fallback_when_theta_plus_m_exceeds_pi():
    head = build_head("arcface", 3, 2, scale=1.0, margin=0.5).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=torch.float64))
    # sample 0 at 170° from w_0 (θ + m > π: fallback), sample 1 at 60° (regular branch)
    angles = torch.tensor([math.radians(170), math.radians(60)], dtype=torch.float64)
    f = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    y = torch.tensor([0, 0])
    out = head(f, y)
    cos = cosines(f, head.weight.detach())
    pos = torch.stack([
        cos[0, 0] - 0.5 * math.sin(0.5),                       # fallback
        torch.cos(torch.tensor(math.radians(60) + 0.5, dtype=torch.float64)),
    ])
    z = cos.clone()
    z[:, 0] = pos
    torch.testing.assert_close(out.loss, ce_written_out(z, y))
    # the fallback keeps the positive logit decreasing in θ (monotone) across the switch
    thetas = torch.linspace(math.pi - 1.0, math.pi - 1e-3, 200, dtype=torch.float64)
    from unimargin.heads import arcface_positive_cos
    vals = arcface_positive_cos(torch.cos(thetas), 0.5)
    assert bool((vals[1:] < vals[:-1]).all())


def test_arcface_gradcheck_float64_including_fallback_region():
    head = build_head("arcface", 3, 2, scale=4.0, margin=0.5).double()
    W = head.weight.detach().clone().requires_grad_()
    w0 = W.detach()[0] / W.detach()[0].norm()
    # sample 0 nearly opposite its class weight (fallback), sample 1 generic
    f = torch.stack([-w0 + 0.05 * torch.tensor([0.3, -0.2], dtype=torch.float64),
                     torch.tensor([0.4, 1.1], dtype=torch.float64)]).requires_grad_()
    y = torch.tensor([0, 1])

    def fn(f, W):
        return functional_call(head, {"weight": W}, (f, y)).loss

    assert torch.autograd.gradcheck(fn, (f, W))


@pytest.mark.parametrize("name", ["bce-u", "bce-d"])
@pytest.mark.parametrize("hp", [
    {},
    {"neg_weight": 0.3},
    {"normalize": True, "scale": 8.0},
    {"normalize": True, "scale": 8.0, "margin": 0.35, "neg_weight": 2.0},
])
def test_bce_against_written_out_formula(name, hp):
    f, y = _data()
    head = build_head(name, 5, 4, **hp).double()
    with torch.no_grad():
        head.bias.copy_(torch.randn(head.bias.shape, dtype=torch.float64))
    out = head(f, y)
    ref = bce_reference(f, y, head.weight.detach(), head.bias.detach(), unified=name == "bce-u", **hp)
    torch.testing.assert_close(out.loss, ref)
    a = (hp.get("scale", 16.0) * cosines(f, head.weight.detach()) if hp.get("normalize")
         else f @ head.weight.detach().T)
    if name == "bce-u":
        assert head.bias.shape == ()
        torch.testing.assert_close(head.scores(f).detach(), a)          # bias-free metric
        torch.testing.assert_close(head.threshold, head.bias.detach())
    else:
        assert head.bias.shape == (5,)
        torch.testing.assert_close(head.scores(f).detach(), a - head.bias.detach())
        assert head.threshold.item() == 0.0
    assert head.no_decay_parameters() == ["bias"]
    if hp.get("normalize"):
        assert head.linear_decision() is None
    else:
        W, b_eff = head.linear_decision()
        torch.testing.assert_close((f @ W.T + b_eff).argmax(1), head.scores(f).argmax(1))


def test_bce_bias_init():
    assert build_head("bce-u", 7, 3).bias.item() == 0.0
    h = build_head("bce-u", 7, 3, normalize=True, neg_rate=0.5)
    assert h.bias.item() == pytest.approx(math.log(10 * 7 * 0.5))
    h = build_head("bce-d", 7, 3, normalize=True)
    torch.testing.assert_close(h.bias.detach(), torch.full((7,), math.log(70.0)))
    assert build_head("bce-d", 7, 3, bias_init=-2.0).bias.detach().eq(-2.0).all()


@pytest.mark.parametrize("name", ["bce-u", "bce-d"])
def test_bce_finite_at_extreme_logits(name):
    head = build_head(name, 3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    # |z| = 2e4: sample 0 confidently wrong on every term, sample 1 confidently right
    f = torch.tensor([[-2e4, 2e4], [2e4, -2e4]], requires_grad=True)
    y = torch.tensor([0, 0])
    out = head(f, y)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(f.grad).all() and torch.isfinite(head.weight.grad).all()
    # a_0 = (-2e4, 2e4, 2e4): softplus(2e4) + softplus(2e4) + softplus(2e4) = 6e4;
    # a_1 = (2e4, -2e4, -2e4): every term softplus(-2e4) ~ 0
    assert out.loss.item() == pytest.approx(6e4 / 2, rel=1e-6)
    assert f.grad.abs().max() > 0  # gradients not killed by a clamp


def test_bce_gradcheck_float64():
    for hp in ({}, {"normalize": True, "scale": 4.0, "margin": 0.2}):
        f, y = _data(B=5, K=4, d=3)
        head = build_head("bce-u", 4, 3, **hp).double()
        f = f.requires_grad_()
        W = head.weight.detach().clone().requires_grad_()
        b = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

        def fn(f, W, b):
            return functional_call(head, {"weight": W, "bias": b}, (f, y)).loss

        assert torch.autograd.gradcheck(fn, (f, W, b))


def test_bce_negative_sampling_only_in_training():
    f, y = _data(B=64, K=10, d=4)
    head = build_head("bce-u", 10, 4, neg_rate=0.3).double()
    full = build_head("bce-u", 10, 4).double()
    full.load_state_dict(head.state_dict())
    head.eval()
    torch.testing.assert_close(head(f, y).loss, full(f, y).loss)  # eval: no sampling
    head.train()
    torch.manual_seed(5)
    sampled = head(f, y)
    # the kept negatives are a Bernoulli(0.3) subset: neg part shrinks to ~30%
    ratio = sampled.terms["neg"] / full(f, y).terms["neg"]
    assert 0.15 < ratio.item() < 0.45
    torch.manual_seed(5)
    torch.testing.assert_close(head(f, y).loss, sampled.loss)  # reproducible under a seed


def _bce_loss_masked_reference(z, labels, neg_weight, neg_mask=None):
    """The previous (mask-based) implementation of SPEC §2.7: softplus(−z_y) gathered, softplus(z) masked."""
    n = max(z.shape[0], 1)
    positive = torch.zeros_like(z, dtype=torch.bool).scatter(1, labels[:, None], True)
    pos = F.softplus(-z.gather(1, labels[:, None])).sum() / n
    neg_terms = F.softplus(z).masked_fill(positive, 0.0)
    if neg_mask is not None:
        neg_terms = neg_terms * neg_mask
    neg = neg_terms.sum() / n
    return pos + neg_weight * neg, pos, neg


@pytest.mark.parametrize("neg_weight", [1.0, 0.3, 2.0])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_bce_loss_signed_equals_masked_formula_float64(neg_weight, masked, scale):
    """bce_loss (one softplus pass over the signed logits) = the mask-based formula in float64:
    loss, pos, neg and the gradient, moderate and extreme (|z| ~ 1e4) logits."""

    gen = torch.Generator().manual_seed(int(scale) + masked)
    B, K = 37, 11
    z0 = scale * torch.randn(B, K, generator=gen, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=gen)
    mask = (torch.rand(B, K, generator=gen) < 0.5).double() if masked else None
    z = z0.clone().requires_grad_()
    got = bce_loss(z, y, neg_weight, mask)
    (g,) = torch.autograd.grad(got[0], z)
    zr = z0.clone().requires_grad_()
    ref = _bce_loss_masked_reference(zr, y, neg_weight, mask)
    (gr,) = torch.autograd.grad(ref[0], zr)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12 * scale)
    torch.testing.assert_close(g, gr, rtol=1e-12, atol=1e-15)
    # a separate positive logit (the normalized heads' margin) = the mask formula on the shifted z
    z_pos = z0.gather(1, y[:, None]) - 0.7
    shifted = z0.scatter(1, y[:, None], z_pos)
    torch.testing.assert_close(bce_loss(z0, y, neg_weight, mask, z_pos)[0],
                               _bce_loss_masked_reference(shifted, y, neg_weight, mask)[0], rtol=1e-12, atol=1e-12 * scale)
