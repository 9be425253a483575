"""The present-class step (the CPU default for the max aggregation past PRESENT_MIN_K)
equals THE formula (heads/lmdl/terms.py under autograd) in float64 for every K of the speed
grid, on both sides of each dispatch threshold: loss, terms, every gradient and the buffers
over consecutive steps of a training head. Every test runs twice: through the C++ operator
(``_native/lmdl_op``) and through the Python LMDLPresentStep it replaces when no C++
compiler is available (``lmdl_op.disabled()``); the two are also checked bit-identical."""

import os

import pytest
import torch
import torch.nn.functional as F

from heads_reference import BENCHMARK_K_GRID
from unimargin import build_head
from unimargin._native import lmdl_kernel, lmdl_op
from unimargin.heads.lmdl import (FUSED_MAX_K, PRESENT_MIN_K, PRESENT_MIN_K_PYTHON, autograd_path, lmdl_present_step,
                                  lmdl_terms, step_path)

K_GRID = sorted({*BENCHMARK_K_GRID, 33})   # 33: just above PRESENT_MIN_K_PYTHON
HP = dict(delta_v=0.3, delta_d=3.0, compact_weight=0.7, margin_weight=1.3, reg_weight=0.05, momentum=0.6,
          disc_weight=0.9)


@pytest.fixture(autouse=True, params=["cpp-op", "python-function"])
def implementation(request):
    """The present step through the C++ operator, then through the Python autograd.Function."""
    if lmdl_kernel.load() is None:
        pytest.skip(f"lmdl CPU kernel unavailable: {lmdl_kernel.status()}")
    if request.param == "python-function":
        with lmdl_op.disabled():
            yield request.param
        return
    if lmdl_op.load() is None:
        if os.environ.get("CI"):  # CI installs g++: a missing operator there is a failure, not a skip
            pytest.fail(f"lmdl C++ operator unavailable under CI: {lmdl_op.status()}")
        pytest.skip(f"lmdl C++ operator unavailable: {lmdl_op.status()}")
    yield request.param


def _crossover(implementation):
    return PRESENT_MIN_K if implementation == "cpp-op" else PRESENT_MIN_K_PYTHON


def _labels(K, B, gen):
    """B labels over K classes with absent classes, a one-sample class and repeats."""
    y = torch.randint(0, min(K, 3 * B // 4), (B,), generator=gen)
    y[0] = K - 1  # the last class, once
    return y


def _steps(head, batches, use_logits):
    out = []
    for f, y in batches:
        fi = f.clone().requires_grad_()
        res = head(fi, y)
        loss = res.loss + (0.01 * res.logits.square().sum() if use_logits else 0)
        grads = torch.autograd.grad(loss, [fi, *head.parameters()])
        out.append((res.loss.detach(), {k: v.detach() for k, v in res.terms.items()}, grads,
                    head.centroids.clone(), head.seen.clone()))
        with torch.no_grad():
            for p, g in zip(head.parameters(), grads[1:]):
                p -= 0.2 * g
    return out


@pytest.mark.parametrize("K", K_GRID)
def test_head_equals_formula_float64_every_k(K, implementation):
    d, B = (8, 64) if K == 10000 else (12, 48)
    variants = [dict(bias=True), dict(bias=False, delta_v=0.0), dict(bias=True, momentum=0.0)]
    for v, extra in enumerate(variants):
        hp = {**HP, **extra}
        torch.manual_seed(K + v)
        fast = build_head("lmdl", K, d, **hp).double()
        slow = build_head("lmdl", K, d, **hp).double()
        slow.load_state_dict(fast.state_dict())
        gen = torch.Generator().manual_seed(v)
        batches = [(torch.randn(B, d, generator=gen, dtype=torch.float64), _labels(K, B, gen)) for _ in range(3)]
        f0, y0 = batches[0]
        expect = "present" if K > _crossover(implementation) else "fused"
        assert step_path(K, False, "max", (f0, fast.weight, fast.bias, fast.centroids)) == expect
        got = _steps(fast, batches, use_logits=v == 0)
        with autograd_path():
            ref = _steps(slow, batches, use_logits=v == 0)
        for (loss, terms, grads, cent, seen), (rloss, rterms, rgrads, rcent, rseen) in zip(got, ref):
            torch.testing.assert_close(loss, rloss, rtol=1e-11, atol=1e-12)
            for k in terms:
                torch.testing.assert_close(terms[k], rterms[k], rtol=1e-11, atol=1e-12)
            for g, rg in zip(grads, rgrads):
                torch.testing.assert_close(g, rg, rtol=1e-9, atol=1e-11)
            torch.testing.assert_close(cent, rcent, rtol=0, atol=1e-12)
            assert torch.equal(seen, rseen)


@pytest.mark.parametrize("K", [2, 10, 65, 300])
def test_present_step_direct_equals_terms(K):
    """lmdl_present_step itself (below PRESENT_MIN_K too) vs lmdl_terms + CE; seen and
    unseen classes, momentum centroids, bias or not."""
    d, B = 7, 40
    gen = torch.Generator().manual_seed(K)
    for bias_on in (True, False):
        f = torch.randn(B, d, generator=gen, dtype=torch.float64, requires_grad=True)
        W = torch.randn(K, d, generator=gen, dtype=torch.float64, requires_grad=True)
        b = torch.randn(K, generator=gen, dtype=torch.float64, requires_grad=True) if bias_on else None
        y = torch.randint(0, K, (B,), generator=gen)
        M = torch.randn(K, d, generator=gen, dtype=torch.float64)
        seen = torch.rand(K, generator=gen) < 0.5
        hp = dict(delta_v=0.5, delta_d=2.0, momentum=0.8)
        res = lmdl_present_step(f, W, b, y, M, seen, **hp, compact_coef=1.1, margin_coef=0.7, reg_coef=0.2)
        params = [t for t in (f, W, b) if t is not None]
        grads = torch.autograd.grad(res.loss + res.logits.sin().sum(), params)
        logits = F.linear(f, W, b)
        ref = lmdl_terms(f, y, W, b, M, seen, **hp)
        ce = F.cross_entropy(logits, y)
        ref_loss = ce + 1.1 * ref.compact + 0.7 * ref.margin + 0.2 * ref.reg
        ref_grads = torch.autograd.grad(ref_loss + logits.sin().sum(), params)
        torch.testing.assert_close(res.loss, ref_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(res.terms, torch.stack([ce, ref.compact, ref.margin, ref.reg]).detach(),
                                   rtol=1e-12, atol=1e-12)
        assert torch.equal(res.present, ref.present)
        torch.testing.assert_close(res.new_centroids, ref.new_centroids, rtol=0, atol=1e-13)
        for g, rg in zip(grads, ref_grads):
            torch.testing.assert_close(g, rg, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("K", [17, 31, 47, 129])
def test_present_step_vector_ranking_tails_and_ties(K, dtype):
    """The kernel ranks candidates LANES classes at a time (lmdl_kernel.c rank_row): K not
    a multiple of the vector width (scalar tail), the own class at a lane boundary, and
    exact ties (duplicated weight rows: equal d_cj, the lowest j wins as in terms.py) give
    THE formula's loss, terms and gradients."""
    d, B = 5, 60
    gen = torch.Generator().manual_seed(K)
    W0 = torch.randn(K, d, generator=gen, dtype=torch.float64)
    W0[5] = W0[3]          # a tie for every class whose nearest boundary is 3 or 5
    W0[K - 1] = W0[K - 2]  # a tie inside the scalar tail
    W0[16] = W0[15]        # across a lane boundary (16 float32 lanes with AVX-512)
    b0 = torch.randn(K, generator=gen, dtype=torch.float64)
    b0[5], b0[K - 1], b0[16] = b0[3], b0[K - 2], b0[15]
    f0 = torch.randn(B, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=gen)
    y[:4] = torch.tensor([0, 15, 16, K - 1])
    M = torch.randn(K, d, generator=gen, dtype=torch.float64).to(dtype)
    seen = torch.rand(K, generator=gen) < 0.5
    hp = dict(delta_v=0.5, delta_d=50.0, momentum=0.8)  # every margin hinge active
    f, W, b = (t.to(dtype).requires_grad_() for t in (f0, W0, b0))
    res = lmdl_present_step(f, W, b, y, M, seen, **hp, compact_coef=1.1, margin_coef=0.7, reg_coef=0.2)
    grads = torch.autograd.grad(res.loss, [f, W, b])
    ref = lmdl_terms(f, y, W, b, M, seen, **hp)
    ce = F.cross_entropy(F.linear(f, W, b), y)
    ref_loss = ce + 1.1 * ref.compact + 0.7 * ref.margin + 0.2 * ref.reg
    ref_grads = torch.autograd.grad(ref_loss, [f, W, b])
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.loss, ref_loss, **tol)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, **tol)


def test_present_step_near_duplicates_float32_exact_argmin():
    """‖w‖/‖Δw‖ = 1e4 (the fused step's documented limit): the present step's distances come
    from difference vectors, so float32 loss and gradients stay within 1e-3 of float64."""
    K, d, B = 100, 16, 128
    gen = torch.Generator().manual_seed(0)
    base = 100.0 * F.normalize(torch.randn(1, d, generator=gen, dtype=torch.float64), dim=1)
    W64 = base + 0.01 * torch.randn(K, d, generator=gen, dtype=torch.float64)
    b64 = 0.01 * torch.randn(K, generator=gen, dtype=torch.float64)
    f64 = torch.randn(B, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=gen)
    M = torch.zeros(K, d, dtype=torch.float64)
    seen = torch.zeros(K, dtype=torch.bool)
    out = {}
    for dt in (torch.float32, torch.float64):
        f, W, b = (t.to(dt).requires_grad_() for t in (f64, W64, b64))
        res = lmdl_present_step(f, W, b, y, M.to(dt), seen, delta_v=0.5, delta_d=1.5, momentum=0.9,
                                compact_coef=1.0, margin_coef=1.0, reg_coef=0.001)
        out[dt] = (res.terms, torch.autograd.grad(res.loss, [f, W, b]))
    (t32, g32), (t64, g64) = out[torch.float32], out[torch.float64]
    assert ((t32.double() - t64).abs() <= 1e-3 * t64.abs().clamp_min(1e-3)).all()
    for a, r in zip(g32, g64):
        assert (a.double() - r).norm() <= 1e-3 * r.norm().clamp_min(1e-6)


def test_dispatch_sides(implementation):
    f, W, M = torch.randn(8, 4), torch.randn(70, 4), torch.zeros(70, 4)
    k = _crossover(implementation)
    if k > 0:
        assert step_path(k, False, "max", (f, W[:k], None, M[:k])) == "fused"
    for K in (1, 2, 10, k + 1):  # the operator: the present step at every K, no threshold
        expect = "present" if K > k else "fused"
        assert step_path(K, False, "max", (f, W[:K], None, M[:K])) == expect
    assert step_path(k + 1, False, "mean", (f, W[:k + 1], None, M[:k + 1])) == "fused"
    assert step_path(FUSED_MAX_K, False, "mean", (f, W[:64], None, M[:64])) == "fused"
    assert step_path(FUSED_MAX_K + 1, False, "mean", (f, W[:65], None, M[:65])) == "terms"
    assert step_path(70, True, "max", (f, W, None, M)) == "terms"
    with lmdl_kernel.disabled():  # GPU / no compiler: the PyTorch fused step up to 64, then the formula
        assert step_path(64, False, "max", (f, W[:64], None, M[:64])) == "fused"
        assert step_path(65, False, "max", (f, W[:65], None, M[:65])) == "terms"
    with autograd_path():
        assert step_path(70, False, "max", (f, W, None, M)) == "terms"


def test_present_step_errors():
    f, W = torch.randn(6, 3, requires_grad=True), torch.randn(40, 3, requires_grad=True)
    M, seen = torch.zeros(40, 3), torch.zeros(40, dtype=torch.bool)
    hp = dict(delta_v=0.5, delta_d=1.5, momentum=0.9, compact_coef=1.0, margin_coef=1.0, reg_coef=0.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=40\).*label 40 at position 2"):
        lmdl_present_step(f, W, None, torch.tensor([0, 1, 40, 2, 3, 4]), M, seen, **hp)
    with pytest.raises(ValueError, match="non-empty batch"):
        lmdl_present_step(f[:0], W, None, torch.tensor([], dtype=torch.long), M, seen, **hp)
    res = lmdl_present_step(f, W, None, torch.arange(6), M, seen, **hp)
    with pytest.raises(RuntimeError, match=r"create_graph=True.*autograd_path"):
        torch.autograd.grad(res.loss, [f], create_graph=True)

