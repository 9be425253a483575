"""lmdl numerics (SPEC §2.6 "Numerics"; issue 11, item 10).

float32 with near-duplicate class weights (‖w‖/‖w_c − w_j‖ ≥ 100) on the PyTorch path
(THE formula, heads/lmdl/terms.py) against the per-class float64 loop reference of
heads_reference.py, and second-order gradients (working against finite differences, or a
clear error on the fused step). The float64 reference runs on the float32 inputs exactly
(cast up), so any difference is rounding inside the implementation, not input rounding.

"Relative" below is per tensor: ‖x₃₂ − x₆₄‖ / ‖x₆₄‖.
"""

import pytest
import torch
from torch.func import functional_call

from heads_reference import lmdl_reference_step
from unimargin import build_head
from unimargin._native import lmdl_kernel
from unimargin.heads.lmdl import autograd_path, lmdl_terms, step_path
from unimargin.heads.lmdl import terms as terms_module

HP = dict(delta_v=0.5, delta_d=1.5, compact_weight=1.0, margin_weight=1.0, reg_weight=0.001,
          momentum=0.9, disc_weight=1.0)
REF_HP = dict(delta_v=0.5, delta_d=1.5, alpha=1.0, beta=1.0, gamma=0.001, mu=0.9, lam=1.0)


def near_duplicates(K, d=32, w_norm=100.0, spread=0.01, seed=0):
    """Class weights ≈ one vector of norm ``w_norm`` ± ``spread``: ‖w‖/‖Δw‖ = w_norm/spread.
    Returns float32 (f, W, b, y, centroids, seen), every class present, half of them seen."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=gen, dtype=torch.float64)
    W = base / base.norm() * w_norm + spread * torch.randn(K, d, generator=gen, dtype=torch.float64) / d ** 0.5
    b = 0.01 * torch.randn(K, generator=gen, dtype=torch.float64)
    y = torch.arange(3 * K) % K
    f = torch.randn(3 * K, d, generator=gen, dtype=torch.float64)
    M = torch.randn(K, d, generator=gen, dtype=torch.float64)
    seen = torch.arange(K) % 2 == 0
    return f.float(), W.float(), b.float(), y, M.float(), seen


def _head_step(f, W, b, y, M, seen, aggregation):
    """The head's loss, terms and gradients (features, weight, bias) in the inputs' dtype."""
    head = build_head("lmdl", W.shape[0], W.shape[1], aggregation=aggregation, **HP).to(f.dtype)
    with torch.no_grad():
        head.weight.copy_(W)
        head.bias.copy_(b)
        head.centroids.copy_(M)
        head.seen.copy_(seen)
    f = f.detach().clone().requires_grad_()
    out = head(f, y)
    grads = torch.autograd.grad(out.loss, [f, head.weight, head.bias])
    return out.loss.detach(), {k: v.detach() for k, v in out.terms.items()}, grads


def _direct_reference(f, y, W, b, M, seen, aggregation):
    """SPEC §2.6 written directly in float64 with P×K×d difference vectors (no expansion,
    no candidate search): vectorised, so K = 200 costs milliseconds; tested equal to the
    per-class loop of heads_reference.py below."""
    K = W.shape[0]
    present = torch.unique(y)
    onehot = (y[:, None] == present[None]).to(f.dtype)
    mean = onehot.t().mm(f) / onehot.sum(0)[:, None]
    m = torch.where(seen[present][:, None], (1 - REF_HP["mu"]) * mean + REF_HP["mu"] * M[present], mean)
    rows = torch.searchsorted(present, y)
    compact_i = torch.relu((f - m[rows]).norm(dim=1) - REF_HP["delta_v"]) ** 2
    compact = ((onehot.t().mv(compact_i)) / onehot.sum(0)).mean()
    diff = W[present][:, None, :] - W[None]
    dist = ((diff * mean[:, None, :]).sum(-1) + b[present][:, None] - b[None]) / diff.norm(dim=-1).clamp_min(1e-12)
    hinge = torch.relu(REF_HP["delta_d"] - dist)
    others = torch.ones_like(hinge, dtype=torch.bool)
    others[torch.arange(len(present)), present] = False
    hinge = hinge[others].view(len(present), K - 1)
    margin = (hinge.amax(1) if aggregation == "max" else hinge.mean(1)).mean()
    reg = m.norm(dim=1).mean()
    ce = torch.nn.functional.cross_entropy(f.mm(W.t()) + b, y)
    terms = {"ce": ce, "compact": compact, "margin": margin, "reg": reg}
    loss = ce + REF_HP["lam"] * (REF_HP["alpha"] * compact + REF_HP["beta"] * margin + REF_HP["gamma"] * reg)
    return loss, terms


def _reference_step(f, W, b, y, M, seen, aggregation, loop=False):
    leaves = [t.double().detach().clone().requires_grad_() for t in (f, W, b)]
    if loop:
        loss, terms, _, _ = lmdl_reference_step(leaves[0], y, leaves[1], leaves[2], M.double(), seen,
                                                aggregation=aggregation, **REF_HP)
    else:
        loss, terms = _direct_reference(leaves[0], y, leaves[1], leaves[2], M.double(), seen, aggregation)
    return loss.detach(), {k: v.detach() for k, v in terms.items()}, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_direct_reference_equals_loop_reference(aggregation):
    case = [t.double() if t.is_floating_point() else t for t in near_duplicates(9, d=4, spread=3.0)]
    (la, ta, ga), (lb, tb, gb) = (_reference_step(*case, aggregation, loop=loop) for loop in (False, True))
    torch.testing.assert_close(la, lb, rtol=1e-12, atol=0)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-12, atol=1e-14)
    for x, z in zip(ga, gb):
        torch.testing.assert_close(x, z, rtol=1e-10, atol=1e-12)


def _relative(x, ref):
    return float((x.double() - ref).norm() / ref.norm())


def _assert_close_to_reference(got, ref, rtol):
    (loss, terms, grads), (ref_loss, ref_terms, ref_grads) = got, ref
    assert _relative(loss, ref_loss) <= rtol
    for name in ("ce", "compact", "margin", "reg"):
        assert _relative(terms[name], ref_terms[name]) <= rtol, name
    for name, g, rg in zip(("features", "weight", "bias"), grads, ref_grads):
        assert torch.isfinite(g).all(), name
        assert _relative(g, rg) <= rtol, (name, _relative(g, rg))


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("K", [64, 200])
@pytest.mark.parametrize("ratio", [1e2, 1e4])
def test_near_duplicate_weights_float32_on_pytorch_path(K, aggregation, ratio):
    case = near_duplicates(K, spread=100.0 / ratio)
    with autograd_path():  # K = 64 would otherwise take the fused step
        assert step_path(K, distributed=False) == "terms"
        got = _head_step(*case, aggregation)
    _assert_close_to_reference(got, _reference_step(*case, aggregation), rtol=1e-3)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_issue_numbers_regression(aggregation):
    """Issue 11 item 10: K = 64, ‖w‖ ≈ 100, ‖Δw‖ ≈ 0.01 put the margin term off by 1e10 on
    the PyTorch path (the expansion gave ‖w_c − w_j‖² ≈ 0 or negative, then the 1e-12
    guard); now the margin term and the gradients are float32-accurate."""
    case = near_duplicates(64, w_norm=100.0, spread=0.01, seed=3)
    ref_loss, ref_terms, ref_grads = _reference_step(*case, aggregation, loop=True)  # the per-class loop
    with autograd_path():
        loss, terms, grads = _head_step(*case, aggregation)
    assert _relative(terms["margin"], ref_terms["margin"]) < 1e-4
    assert _relative(loss, ref_loss) < 1e-4
    for g, rg in zip(grads, ref_grads):
        assert _relative(g, rg) < 1e-3
    # the fused step's PyTorch implementation (GPU, no compiler) at K = 64: its pair
    # distances (torch.cdist) were the expansion too above 25 classes
    with lmdl_kernel.disabled():
        assert step_path(64, distributed=False) == "fused"
        fused_loss, fused_terms, _ = _head_step(*case, aggregation)
    assert _relative(fused_terms["margin"], ref_terms["margin"]) < 1e-3
    assert _relative(fused_loss, ref_loss) < 1e-3


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("backend", ["kernel", "pytorch"])
def test_fused_step_near_duplicates_ratio_100(aggregation, backend):
    """The fused step (compiled kernel and its PyTorch implementation) at K = 64 and
    ‖w‖/‖Δw‖ = 100: loss and every gradient within 1e-3 of the float64 reference."""
    case = near_duplicates(64, spread=1.0)
    if backend == "pytorch":
        with lmdl_kernel.disabled():
            got = _head_step(*case, aggregation)
    else:
        got = _head_step(*case, aggregation)
    _assert_close_to_reference(got, _reference_step(*case, aggregation), rtol=1e-3)


def _brute_force_nearest(mean, present, W, b):
    diff = W[present][:, None, :] - W[None]
    d = ((diff * mean[:, None, :]).sum(-1) + b[present][:, None] - b[None]) / diff.norm(dim=-1).clamp_min(1e-12)
    d[torch.arange(len(present)), present] = float("inf")
    return d


@pytest.mark.parametrize("seed", range(6))
def test_candidates_always_contain_the_true_nearest(seed):
    """The expansion only ranks: whatever its error, the float64 arg-min of the exact
    distances is among the float32 candidates (mixed scales: some classes near-duplicate,
    some far apart, large and small feature norms)."""
    gen = torch.Generator().manual_seed(seed)
    K, d, P = 120, 24, 50
    centres = 50 * torch.randn(6, d, generator=gen, dtype=torch.float64)
    W = centres[torch.arange(K) % 6] + 10.0 ** -torch.randint(1, 4, (K, 1), generator=gen) * torch.randn(
        K, d, generator=gen, dtype=torch.float64)
    W, b = W.float(), (0.1 * torch.randn(K, generator=gen)).float()
    present = torch.randperm(K, generator=gen)[:P].sort().values
    mean = (torch.randn(P, d, generator=gen) * 10.0 ** torch.randint(-1, 2, (P, 1), generator=gen)).float()
    cand = terms_module._margin_candidates(mean, present, W, b, None, mean.norm(dim=1), 0)
    truth = _brute_force_nearest(mean.double(), present, W.double(), b.double()).argmin(1)
    assert cand[torch.arange(P), truth].all()
    assert not cand[torch.arange(P), present].any()  # never the class itself


def test_blocked_paths_equal_unblocked(monkeypatch):
    """Forcing tiny blocks (many passes) changes nothing: the block loop is exact."""
    case = near_duplicates(70, d=8, spread=0.01)
    results = {}
    for block in (terms_module._BLOCK, 7):
        monkeypatch.setattr(terms_module, "_BLOCK", block)
        results[block] = [_head_step(*[t.double() if t.is_floating_point() else t for t in case], agg)
                          for agg in ("max", "mean")]
    for (la, ta, ga), (lb, tb, gb) in zip(*results.values()):
        torch.testing.assert_close(la, lb, rtol=1e-13, atol=0)
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def _loss_fn(head, y):
    def fn(f, W, b):
        return functional_call(head, {"weight": W, "bias": b}, (f, y)).loss
    return fn


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("K", [5, 70])
def test_double_backward_matches_finite_differences(K, aggregation):
    """Second-order gradients on the autograd path (K = 5 forced, K = 70 native), with
    singleton classes (residual exactly 0: NaN before) and absent classes, against finite
    differences of the first-order gradient in float64 (gradgradcheck)."""
    d = 3
    gen = torch.Generator().manual_seed(K)
    head = build_head("lmdl", K, d, aggregation=aggregation, **dict(HP, delta_v=0.3, delta_d=4.0)).double().eval()
    head.seen[::2] = True
    head.centroids.copy_(torch.randn(K, d, generator=gen, dtype=torch.float64))
    y = torch.tensor([0, 0, 1, 2, 2, 2, 3] + list(range(5, K, 7)))  # 1 and 3 singletons, 4 absent
    f = (2 * torch.randn(len(y), d, generator=gen, dtype=torch.float64)).requires_grad_()
    W = (3 * torch.randn(K, d, generator=gen, dtype=torch.float64)).requires_grad_()
    b = (0.5 * torch.randn(K, generator=gen, dtype=torch.float64)).requires_grad_()
    with autograd_path():
        fn = _loss_fn(head, y)
        g = torch.autograd.grad(fn(f, W, b), (f, W, b), create_graph=True)
        assert all(torch.isfinite(x).all() for x in g)
        hvp = torch.autograd.grad(sum((x * x).sum() for x in g), (f, W, b))
        assert all(torch.isfinite(x).all() for x in hvp) and any(x.abs().sum() > 0 for x in hvp)
        assert torch.autograd.gradgradcheck(fn, (f, W, b), fast_mode=True)


@pytest.mark.parametrize("delta_v, curvature", [(0.0, 2.0), (0.3, 0.0)])
def test_double_backward_at_zero_residual(delta_v, curvature):
    """A seen class at f = M has residual r = μ (f − M) = 0 exactly. δ_v = 0: the hinge
    [‖r‖]₊² = ‖r‖² is smooth and its second derivative is 2μ² (not 0, not NaN); δ_v > 0:
    the hinge is flat around r = 0 (0)."""
    mu = 0.6
    M = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    f = M.clone().requires_grad_()
    W = torch.zeros(2, 2, dtype=torch.float64)
    terms = lmdl_terms(f, torch.tensor([0]), W, None, torch.cat([M, M]), torch.tensor([True, True]),
                       delta_v=delta_v, delta_d=1.0, momentum=mu)
    (g,) = torch.autograd.grad(terms.compact, f, create_graph=True)
    hessian = torch.stack([torch.autograd.grad(g[0, k], f, retain_graph=True)[0][0] for k in range(2)])
    torch.testing.assert_close(hessian, curvature * mu ** 2 * torch.eye(2, dtype=torch.float64))


def test_fused_step_double_backward_raises_clear_error():
    head = build_head("lmdl", 4, 3).double()
    f = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    y = torch.arange(8) % 4
    for kernel in (True, False):
        if kernel:
            out = head(f, y)
        else:
            with lmdl_kernel.disabled():
                out = head(f, y)
        with pytest.raises(RuntimeError, match=r"create_graph=True.*autograd_path"):
            torch.autograd.grad(out.loss, f, create_graph=True)
        (g,) = torch.autograd.grad(head(f, y).loss, f)  # first order unaffected
        assert torch.isfinite(g).all()
