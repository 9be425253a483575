"""The bce heads' fast path :class:`BCEStep` equals the formula :func:`bce_loss` (SPEC §2.7):
bit for bit in the loss, the logits, the diagnostics and every gradient; the second
derivatives are the formula's; the heads run it whenever no negatives are sampled."""

from __future__ import annotations

import itertools

import pytest
import torch

from heads_reference import BENCHMARK_K_GRID
from unimargin import build_head
from unimargin.heads.bce import BCEStep, bce_loss


def _formula(a, bias, labels, shift, neg_weight):
    """The head's computation before the fast path: autograd through bce_loss."""
    logits = a - bias
    z_pos = logits.gather(1, labels[:, None])
    if shift:
        z_pos = z_pos - shift
    loss, pos, neg = bce_loss(logits, labels, neg_weight, None, z_pos)
    return loss, logits, pos, neg


def _run(fn, a0, b0, labels, shift, neg_weight, use_logits):
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    loss, logits, pos, neg = fn(a, b, labels, shift, neg_weight)
    total = loss + (0.01 * (logits ** 2).sum() if use_logits else 0.0)
    total.backward()
    return loss, logits, pos, neg, a.grad, b.grad


CASES = list(itertools.product((torch.float32, torch.float64), (1.0, 0.3, 0.0), (0.0, 4.0),
                               ((), (7,)), (False, True)))


@pytest.mark.parametrize("dtype,neg_weight,shift,bias_shape,use_logits", CASES)
def test_bce_step_is_bit_identical_to_the_formula(dtype, neg_weight, shift, bias_shape, use_logits):
    gen = torch.Generator().manual_seed(3)
    a0 = 12.0 * torch.randn(33, 7, generator=gen, dtype=dtype)   # beyond softplus's threshold too
    b0 = torch.randn(bias_shape, generator=gen, dtype=dtype)
    labels = torch.randint(0, 7, (33,), generator=gen)
    want = _run(_formula, a0, b0, labels, shift, neg_weight, use_logits)
    got = _run(BCEStep.apply, a0, b0, labels, shift, neg_weight, use_logits)
    for name, w, g in zip(("loss", "logits", "pos", "neg", "grad a", "grad bias"), want, got):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g, w), f"{name}: max |diff| {(g - w).abs().max().item()}"


@pytest.mark.parametrize("bias_shape", [(), (5,)])
def test_bce_step_gradcheck_and_second_derivatives_match_the_formula(bias_shape):
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(bias_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (6,), generator=gen)

    def loss_and_logits(fn):
        return lambda a_, b_: tuple(fn(a_, b_, labels, 0.5, 0.7)[:2])

    assert torch.autograd.gradcheck(loss_and_logits(BCEStep.apply), (a, b))
    assert torch.autograd.gradgradcheck(loss_and_logits(BCEStep.apply), (a, b))
    # the Hessian-vector product through the fast path is the formula's own
    v = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    hvps = []
    for fn in (_formula, BCEStep.apply):
        ga, gb = torch.autograd.grad(fn(a, b, labels, 0.5, 0.7)[0], (a, b), create_graph=True)
        hvps.append(torch.autograd.grad((ga * v).sum() + gb.sum(), (a, b)))
    for w, g in zip(*hvps):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


def test_bce_step_without_loss_gradient_passes_the_logits_gradient():
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    _, logits, _, _ = BCEStep.apply(a, b, torch.tensor([0, 1, 2, 0]), 0.0, 1.0)
    logits.sum().backward()
    assert torch.equal(a.grad, torch.ones(4, 3)) and b.grad.item() == -12.0


@pytest.mark.parametrize("name,kwargs", [("bce-u", {}), ("bce-d", {}),
                                         ("bce-u", {"normalize": True, "margin": 0.2})])
def test_bce_heads_dispatch_by_size_and_both_paths_train_alike(name, kwargs, monkeypatch):
    """BCEStep from B·K = BCE_STEP_MIN_ELEMENTS on, the formula's autograd below it and
    whenever negatives are sampled; the parameter gradients are identical either way."""
    from unimargin.heads import bce

    torch.manual_seed(0)
    head = build_head(name, 6, 4, **kwargs)
    features, labels = torch.randn(10, 4, requires_grad=True), torch.randint(0, 6, (10,))
    grads, kinds = [], []
    for min_elements in (60, 61):   # B·K = 60: at the threshold, then just below it
        monkeypatch.setattr(bce, "BCE_STEP_MIN_ELEMENTS", min_elements)
        head.zero_grad()
        out = head(features, labels)
        kinds.append(type(out.loss.grad_fn).__name__)
        assert set(out.terms) == {"pos", "neg"} and not out.terms["pos"].requires_grad
        out.loss.backward()
        grads.append([p.grad.clone() for p in head.parameters()])
    assert kinds[0] == "BCEStepBackward" and kinds[1] != "BCEStepBackward"
    for fast, formula in zip(*grads):
        assert torch.equal(fast, formula)
    monkeypatch.setattr(bce, "BCE_STEP_MIN_ELEMENTS", 0)
    sampled = build_head(name, 6, 4, neg_rate=0.5, **kwargs)
    assert type(sampled(features, labels).loss.grad_fn).__name__ != "BCEStepBackward"
    sampled.eval()   # no sampling in evaluation: the fast path again
    assert type(sampled(features, labels).loss.grad_fn).__name__ == "BCEStepBackward"


def test_default_threshold_sends_large_batches_through_bce_step():
    from unimargin.heads import bce

    head = build_head("bce-u", 256, 8)
    big = head(torch.randn(bce.BCE_STEP_MIN_ELEMENTS // 256, 8), torch.zeros(bce.BCE_STEP_MIN_ELEMENTS // 256,
                                                                           dtype=torch.long))
    small = head(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))
    assert type(big.loss.grad_fn).__name__ == "BCEStepBackward"
    assert type(small.loss.grad_fn).__name__ != "BCEStepBackward"


@pytest.mark.parametrize("k", BENCHMARK_K_GRID)
@pytest.mark.parametrize("name", ["bce-u", "bce-d"])
def test_shipped_head_equals_the_formula_in_float64_on_both_sides_of_the_threshold(name, k, monkeypatch):
    """For every K of the benchmark grid: the batch just below B·K = BCE_STEP_MIN_ELEMENTS runs
    the formula, the batch at it runs BCEStep, and each equals the other path forced on the
    same batch, bit for bit in float64 (loss and every parameter and feature gradient)."""
    from unimargin.heads import bce

    shipped = bce.BCE_STEP_MIN_ELEMENTS
    at = -(-shipped // k)          # smallest B with B·K >= the threshold
    for batch, fast in ((at - 1, False), (at, True)):
        if batch < 1:
            continue
        torch.manual_seed(k)
        head = build_head(name, k, 8).double()
        features = torch.randn(batch, 8, dtype=torch.float64)
        labels = torch.randint(0, k, (batch,))
        runs = {}
        for forced, threshold in (("shipped", shipped), ("bce_step", 0), ("formula", 2**62)):
            monkeypatch.setattr(bce, "BCE_STEP_MIN_ELEMENTS", threshold)
            head.zero_grad()
            f = features.clone().requires_grad_()
            out = head(f, labels)
            out.loss.backward()
            runs[forced] = (type(out.loss.grad_fn).__name__ == "BCEStepBackward",
                            [out.loss.detach(), f.grad] + [p.grad.clone() for p in head.parameters()])
        assert runs["shipped"][0] is fast and runs["bce_step"][0] and not runs["formula"][0]
        for got, want in zip(runs["bce_step"][1], runs["formula"][1]):
            assert torch.equal(got, want), f"K={k} B={batch}: max |diff| {(got - want).abs().max().item()}"
        for got, want in zip(runs["shipped"][1], runs["formula"][1]):
            assert torch.equal(got, want)
