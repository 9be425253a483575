"""lmdl (SPEC §2.6) against the per-class loop reference, over consecutive steps."""

import pytest
import torch
from torch.func import functional_call

from heads_reference import lmdl_reference_step
from unimargin import build_head
from unimargin._native import lmdl_kernel
from unimargin.heads.lmdl import lmdl_fused_step, lmdl_terms

# (labels per step): first-seen classes, absent classes, a single-sample class, a repeat
STEPS = [
    [0, 0, 1, 1, 1, 2],
    [1, 1, 3, 3, 2, 4],       # 0 and 5 absent, 3 and 4 first seen (4 has one sample)
    [0, 5, 5, 1, 3, 3, 3],    # 0 seen again after a gap, 5 first seen
    [2, 2, 2, 2],             # one-class batch
]
HP = dict(delta_v=0.3, delta_d=3.0, compact_weight=0.7, margin_weight=1.3, reg_weight=0.05,
          momentum=0.6, disc_weight=0.9)
REF_HP = dict(delta_v=0.3, delta_d=3.0, alpha=0.7, beta=1.3, gamma=0.05, mu=0.6, lam=0.9)


@pytest.fixture(params=["kernel", "pytorch"])
def backend(request):
    """Run a test on the compiled CPU kernel (when built) and on the PyTorch implementation."""
    if request.param == "pytorch":
        with lmdl_kernel.disabled():
            yield request.param
    else:
        yield request.param


def _run_steps(aggregation="max", bias=True):
    K, d = 6, 4
    head = build_head("lmdl", K, d, aggregation=aggregation, bias=bias, **HP).double()
    gen = torch.Generator().manual_seed(1)
    ref_c = torch.zeros(K, d, dtype=torch.float64)
    ref_seen = torch.zeros(K, dtype=torch.bool)
    for labels in STEPS:
        y = torch.tensor(labels)
        f = (2 * torch.randn(len(y), d, generator=gen, dtype=torch.float64)).requires_grad_()
        out = head(f, y)
        grads = torch.autograd.grad(out.loss, [f, *head.parameters()])
        W = head.weight.detach().clone().requires_grad_()
        b = head.bias.detach().clone().requires_grad_() if bias else None
        f_ref = f.detach().clone().requires_grad_()
        loss, terms, ref_c, ref_seen = lmdl_reference_step(
            f_ref, y, W, b, ref_c, ref_seen, aggregation=aggregation, **REF_HP)
        ref_grads = torch.autograd.grad(loss, [f_ref, W] + ([b] if bias else []))
        torch.testing.assert_close(out.loss, loss, rtol=1e-10, atol=1e-12)
        for k, v in terms.items():
            torch.testing.assert_close(out.terms[k], v.detach(), rtol=1e-10, atol=1e-12)
        for g, rg in zip(grads, ref_grads):
            torch.testing.assert_close(g, rg, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(head.centroids, ref_c, rtol=0, atol=1e-13)
        assert torch.equal(head.seen, ref_seen)
        with torch.no_grad():  # move the parameters so later steps see a new W, b
            for p, g in zip(head.parameters(), grads[1:]):
                p -= 0.3 * g
    return head


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_matches_loop_reference_over_steps(aggregation, backend):
    head = _run_steps(aggregation)
    assert head.seen.tolist() == [True] * 6


def test_matches_loop_reference_without_bias(backend):
    head = _run_steps(bias=False)
    assert head.bias is None


def test_default_hparams_float32_close_to_float64_reference(backend):
    # checks the Gram-matrix form of ||w_c - w_j|| in float32 at a larger K
    K, d, B = 30, 16, 64
    head = build_head("lmdl", K, d)
    head.seen[: K // 2] = True
    head.centroids.copy_(torch.randn(K, d))
    f = 3 * torch.randn(B, d)
    y = torch.randint(0, K, (B,))
    c0, s0 = head.centroids.double().clone(), head.seen.clone()
    out = head(f, y)
    loss, terms, ref_c, _ = lmdl_reference_step(
        f.double(), y, head.weight.detach().double(), head.bias.detach().double(), c0, s0)
    torch.testing.assert_close(out.loss.double(), loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.terms["margin"].double(), terms["margin"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head.centroids.double(), ref_c, rtol=1e-5, atol=1e-5)


def test_eval_uses_stored_centroids_and_never_mutates(backend):
    K, d = 5, 3
    head = build_head("lmdl", K, d, **HP).double()
    head(torch.randn(8, d, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    head.eval()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    f = torch.randn(6, d, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 4, 4, 2])  # class 4 unseen: m_4 = batch mean
    out = head(f, y)
    loss, _, _, _ = lmdl_reference_step(
        f, y, head.weight.detach(), head.bias.detach(), before["centroids"], before["seen"], **REF_HP)
    torch.testing.assert_close(out.loss, loss, rtol=1e-10, atol=1e-12)
    for k, v in head.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_momentum_zero_stores_batch_means():
    head = build_head("lmdl", 3, 2, momentum=0.0)
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, -1.0]])
    head(f, torch.tensor([0, 0, 2]))
    torch.testing.assert_close(head.centroids, torch.tensor([[2.0, 3.0], [0.0, 0.0], [5.0, -1.0]]))
    assert head.seen.tolist() == [True, False, True]


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_gradcheck_float64(aggregation, backend):
    K, d = 4, 3
    head = build_head("lmdl", K, d, aggregation=aggregation, **HP).double().eval()
    head.seen[:2] = True
    head.centroids.copy_(torch.randn(K, d, dtype=torch.float64))
    y = torch.tensor([0, 0, 1, 2, 2, 3])
    f = (2 * torch.randn(len(y), d, dtype=torch.float64)).requires_grad_()
    W = head.weight.detach().clone().requires_grad_()
    b = head.bias.detach().clone().requires_grad_()

    def fn(f, W, b):
        return functional_call(head, {"weight": W, "bias": b}, (f, y)).loss

    assert torch.autograd.gradcheck(fn, (f, W, b))


def test_terms_same_with_and_without_batch_logits_shortcut():
    from unimargin.heads import lmdl_terms

    K, d = 12, 5
    head = build_head("lmdl", K, d, delta_d=4.0).double()
    f = torch.randn(30, d, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, K, (30,))
    kw = dict(delta_v=0.5, delta_d=4.0, momentum=0.9)
    args = (f, y, head.weight, head.bias, head.centroids, head.seen)
    fast = lmdl_terms(*args, logits=head.scores(f), **kw)
    plain = lmdl_terms(*args, **kw)
    torch.testing.assert_close(fast.margin, plain.margin)
    g1 = torch.autograd.grad(fast.margin, [f, head.weight, head.bias])
    g2 = torch.autograd.grad(plain.margin, [f, head.weight, head.bias])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_and_sparse_paths_agree_over_steps(aggregation, bias):
    # the head dispatches to the fused step for small K and to THE formula otherwise: force both
    import unimargin.heads.lmdl.head as lmdl_mod

    K, d = 7, 8
    heads = {}
    for name in ("dense", "sparse"):
        torch.manual_seed(3)
        heads[name] = build_head("lmdl", K, d, aggregation=aggregation, bias=bias, **HP).double()
        with torch.no_grad():  # near-orthogonal class vectors: well-separated centroids occur
            heads[name].weight.copy_(torch.eye(K, d, dtype=torch.float64) + 0.05 * heads[name].weight)
    gen = torch.Generator().manual_seed(5)
    # classes 5, 6 never appear; 0 disappears then returns; a one-sample class in step 1;
    # the last two steps put every centroid strictly inside its own decision region (all
    # d_cj > 0 for j != c), where forgetting to exclude the self pair would change the max
    steps = [[0, 0, 1, 2, 2, 2], [1, 3, 3, 4, 4, 2], [0, 1, 1, 4, 4, 4, 3], [2, 2], [0, 3, 3, 1]]
    for step, labels in enumerate(steps):
        y = torch.tensor(labels)
        f = 2 * torch.randn(len(y), d, generator=gen, dtype=torch.float64)
        if step >= 3:
            f = 0.1 * f + 3 * heads["dense"].weight.detach()[y]
        results = {}
        for name, head in heads.items():
            old = lmdl_mod.FUSED_MAX_K
            lmdl_mod.FUSED_MAX_K = K if name == "dense" else 0
            try:
                fi = f.clone().requires_grad_()
                out = head(fi, y)
            finally:
                lmdl_mod.FUSED_MAX_K = old
            grads = torch.autograd.grad(out.loss, [fi, *head.parameters()])
            results[name] = (out, grads)
            with torch.no_grad():
                for p, g in zip(head.parameters(), grads[1:]):
                    p -= 0.3 * g
        (od, gd), (os_, gs) = results["dense"], results["sparse"]
        torch.testing.assert_close(od.loss, os_.loss, rtol=1e-12, atol=1e-12)
        for k in od.terms:
            torch.testing.assert_close(od.terms[k], os_.terms[k], rtol=1e-12, atol=1e-12)
        for a, b in zip(gd, gs):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for name in ("centroids", "seen"):
            torch.testing.assert_close(getattr(heads["dense"], name), getattr(heads["sparse"], name),
                                       rtol=0, atol=1e-13)
    assert heads["dense"].seen.tolist() == [True] * 5 + [False] * 2
    assert torch.equal(heads["dense"].centroids[5:], torch.zeros(2, d, dtype=torch.float64))


def _fused_case(seed, K=5, d=3, B=9):
    gen = torch.Generator().manual_seed(seed)
    f = (2 * torch.randn(B, d, generator=gen, dtype=torch.float64)).requires_grad_()
    W = torch.randn(K, d, generator=gen, dtype=torch.float64).requires_grad_()
    b = (0.5 * torch.randn(K, generator=gen, dtype=torch.float64)).requires_grad_()
    y = torch.tensor([0, 0, 0, 1, 1, 3, 3, 3, 3][:B])  # classes 2 and 4 absent
    M = torch.randn(K, d, generator=gen, dtype=torch.float64)
    seen = torch.tensor([True, False, True, True, False])  # 1 present+unseen, 2 absent+seen
    return f, W, b, y, M, seen


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("delta_v, delta_d", [(0.3, 4.0), (0.0, 0.1), (50.0, -50.0)])
def test_fused_step_gradcheck_float64(aggregation, bias, delta_v, delta_d, backend):
    # (0.3, 4): hinges mostly active; (0, 0.1): δ_v = 0 edge; (50, -50): every hinge inactive
    f, W, b, y, M, seen = _fused_case(7)

    def fn(f, W, *maybe_b):
        loss, terms, _, _, logits = lmdl_fused_step(
            f, W, maybe_b[0] if bias else None, y, M, seen, delta_v=delta_v, delta_d=delta_d, momentum=0.6,
            aggregation=aggregation, compact_coef=0.7, margin_coef=1.3, reg_coef=0.05)
        # the logits output is differentiable too (a weighted use of it checks its backward)
        return loss, (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)).sum()

    assert torch.autograd.gradcheck(fn, (f, W, b) if bias else (f, W))


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_step_matches_the_formula(aggregation, bias, backend):
    # the fused Function (hand-derived backward) vs THE formula (terms.py) under autograd
    import torch.nn.functional as F

    f, W, b, y, M, seen = _fused_case(11)
    b = b if bias else None
    coefs = (0.7, 1.3, 0.05)
    loss, terms, new_c, present, logits = lmdl_fused_step(
        f, W, b, y, M, seen, delta_v=0.3, delta_d=4.0, momentum=0.6, aggregation=aggregation,
        compact_coef=coefs[0], margin_coef=coefs[1], reg_coef=coefs[2])
    ref = lmdl_terms(f, y, W, b, M, seen, delta_v=0.3, delta_d=4.0, momentum=0.6, aggregation=aggregation)
    ce = F.cross_entropy(F.linear(f, W, b), y)
    ref_loss = ce + coefs[0] * ref.compact + coefs[1] * ref.margin + coefs[2] * ref.reg
    torch.testing.assert_close(terms, torch.stack([ce, ref.compact, ref.margin, ref.reg]).detach(),
                               rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-13)
    assert torch.equal(present.nonzero().squeeze(1), ref.present)
    torch.testing.assert_close(new_c[present], ref.new_centroids, rtol=0, atol=1e-14)
    assert torch.equal(new_c[~present], M[~present])  # absent rows: the stored centroids, untouched
    params = [f, W] + ([b] if bias else [])
    for g, rg in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref_loss, params)):
        torch.testing.assert_close(g, rg, rtol=1e-10, atol=1e-12)
