"""The compiled CPU kernel of the fused lmdl step against its PyTorch implementation.

The PyTorch code of LMDLFusedStep is itself checked against the per-class loop reference
and float64 gradcheck (test_heads_lmdl.py, which runs both backends); here the kernel
must reproduce it (float64 to ~1e-12) on the shapes that exercise every code path: vector
tails (d not a multiple of the SIMD width), absent / first-seen classes, K = 2, bias or
not, max or mean aggregation, the logits used downstream, and several consecutive steps.
"""

import os
import subprocess
import threading

import pytest
import torch

from unimargin import build_head
from unimargin._native import lmdl_kernel
from unimargin._native.build import find_compiler
from unimargin.heads.lmdl import lmdl_fused_step


@pytest.fixture(scope="module", autouse=True)
def kernel_built():
    if lmdl_kernel.load() is None:
        if os.environ.get("CI"):  # CI installs a compiler: a missing kernel there is a failure
            pytest.fail(f"lmdl CPU kernel unavailable in CI: {lmdl_kernel.status()}")
        pytest.skip(f"lmdl CPU kernel unavailable: {lmdl_kernel.status()}")


def _case(seed, B, K, d, dtype=torch.float64, absent=(), seen_every=2):
    gen = torch.Generator().manual_seed(seed)
    f = 2 * torch.randn(B, d, generator=gen, dtype=dtype)
    W = torch.randn(K, d, generator=gen, dtype=dtype)
    b = 0.5 * torch.randn(K, generator=gen, dtype=dtype)
    allowed = torch.tensor([c for c in range(K) if c not in absent])
    y = allowed[torch.randint(0, len(allowed), (B,), generator=gen)]
    M = torch.randn(K, d, generator=gen, dtype=dtype)
    seen = torch.arange(K) % seen_every == 0
    return f, W, b, y, M, seen


def _step(f, W, b, y, M, seen, *, aggregation, logits_weight=None, delta_v=0.3, delta_d=4.0):
    """loss (+ a weighted use of the logits), its gradients and the non-differentiable outputs."""
    leaves = [t.detach().clone().requires_grad_() for t in (f, W) + ((b,) if b is not None else ())]
    out = lmdl_fused_step(leaves[0], leaves[1], leaves[2] if b is not None else None, y, M, seen,
                          delta_v=delta_v, delta_d=delta_d, momentum=0.6, aggregation=aggregation,
                          compact_coef=0.7, margin_coef=1.3, reg_coef=0.05)
    if isinstance(logits_weight, str) and logits_weight == "only":
        objective = (out.logits * torch.linspace(-1, 1, out.logits.numel(), dtype=f.dtype).view_as(out.logits)).sum()
    elif logits_weight is not None:
        objective = out.loss + (out.logits * logits_weight).sum()
    else:
        objective = out.loss
    grads = torch.autograd.grad(objective, leaves)
    return out, grads


def _both(*case, **kw):
    kernel = _step(*case, **kw)
    with lmdl_kernel.disabled():
        reference = _step(*case, **kw)
    return kernel, reference


def _assert_same(kernel, reference, rtol=1e-11, atol=1e-12):
    (out_k, grads_k), (out_r, grads_r) = kernel, reference
    torch.testing.assert_close(out_k.loss, out_r.loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(out_k.terms, out_r.terms, rtol=rtol, atol=atol)
    torch.testing.assert_close(out_k.logits, out_r.logits, rtol=rtol, atol=atol)
    assert torch.equal(out_k.present_mask, out_r.present_mask)
    torch.testing.assert_close(out_k.new_centroids, out_r.new_centroids, rtol=rtol, atol=atol)
    for gk, gr in zip(grads_k, grads_r, strict=True):
        torch.testing.assert_close(gk, gr, rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("B, K, d, absent", [
    (9, 5, 3, (2, 4)),        # d below one vector: scalar tails only
    (40, 7, 37, (0,)),        # d = vector chunks + tail
    (64, 2, 64, ()),          # K = 2: one pair per class
    (128, 64, 16, (5, 6, 7)), # many classes, several absent
    (1, 3, 8, ()),            # one sample: one present class
])
def test_kernel_matches_pytorch_float64(aggregation, bias, B, K, d, absent):
    f, W, b, y, M, seen = _case(B * K + d, B, K, d, absent=absent)
    kernel, reference = _both(f, W, b if bias else None, y, M, seen, aggregation=aggregation)
    _assert_same(kernel, reference)
    assert not kernel[0].present_mask[list(absent)].any()
    torch.testing.assert_close(kernel[0].new_centroids[list(absent)], M[list(absent)], rtol=0, atol=0)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_kernel_logits_used_downstream(aggregation):
    f, W, b, y, M, seen = _case(3, 30, 6, 20)
    weight = torch.randn(30, 6, dtype=torch.float64)
    _assert_same(*_both(f, W, b, y, M, seen, aggregation=aggregation, logits_weight=weight))
    # only the logits used (the loss output gets no gradient)
    _assert_same(*_both(f, W, b, y, M, seen, aggregation=aggregation, logits_weight="only"))


@pytest.mark.parametrize("delta_v, delta_d", [(0.0, 0.1), (50.0, -50.0), (0.3, 40.0)])
def test_kernel_hinge_edges(delta_v, delta_d):
    # δ_v = 0; every hinge inactive (zero gradients from the terms); every hinge active
    f, W, b, y, M, seen = _case(5, 25, 5, 11)
    _assert_same(*_both(f, W, b, y, M, seen, aggregation="max", delta_v=delta_v, delta_d=delta_d))


def test_kernel_gradcheck_float64():
    f, W, b, y, M, seen = _case(8, 12, 4, 9, absent=(3,))
    assert lmdl_kernel.usable(f, W, b, M)

    def fn(f, W, b):
        out = lmdl_fused_step(f, W, b, y, M, seen, delta_v=0.3, delta_d=4.0, momentum=0.6,
                              compact_coef=0.7, margin_coef=1.3, reg_coef=0.05)
        return out.loss, (out.logits * torch.linspace(-1, 1, out.logits.numel(), dtype=f.dtype).view_as(out.logits)).sum()

    assert torch.autograd.gradcheck(fn, tuple(t.clone().requires_grad_() for t in (f, W, b)))


def test_kernel_float32_close_to_float64_pytorch():
    f, W, b, y, M, seen = _case(9, 256, 10, 128)
    (out32, grads32) = _step(*(t.float() if t.is_floating_point() else t for t in (f, W, b, y, M, seen)),
                             aggregation="max")
    with lmdl_kernel.disabled():
        out64, grads64 = _step(f, W, b, y, M, seen, aggregation="max")
    torch.testing.assert_close(out32.terms.double(), out64.terms, rtol=2e-5, atol=1e-5)
    for g32, g64 in zip(grads32, grads64):
        torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-5)


def test_head_uses_kernel_and_matches_pytorch_over_steps():
    # the whole head (buffers updated each step, parameters moved) on both backends
    K, d = 6, 13
    heads = []
    for _ in range(2):
        torch.manual_seed(0)
        heads.append(build_head("lmdl", K, d, momentum=0.7, delta_d=3.0).double())
    gen = torch.Generator().manual_seed(2)
    for step_labels in ([0, 0, 1, 2, 2], [1, 3, 3, 4, 4, 4], [0, 5, 5, 2], [3, 3]):
        y = torch.tensor(step_labels)
        f = torch.randn(len(y), d, generator=gen, dtype=torch.float64)
        results = []
        for i, head in enumerate(heads):
            fi = f.clone().requires_grad_()
            if i == 0:
                out = head(fi, y)
            else:
                with lmdl_kernel.disabled():
                    out = head(fi, y)
            grads = torch.autograd.grad(out.loss, [fi, *head.parameters()])
            with torch.no_grad():
                for p, g in zip(head.parameters(), grads[1:]):
                    p -= 0.2 * g
            results.append((out, grads))
        (ok, gk), (orf, gr) = results
        torch.testing.assert_close(ok.loss, orf.loss, rtol=1e-11, atol=1e-12)
        for a, b_ in zip(gk, gr):
            torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-11)
        torch.testing.assert_close(heads[0].centroids, heads[1].centroids, rtol=1e-12, atol=1e-13)
        assert torch.equal(heads[0].seen, heads[1].seen)


def test_non_contiguous_inputs():
    f, W, b, y, M, seen = _case(4, 20, 5, 24)
    f_t = f.t().contiguous().t()  # same values, transposed strides
    M_t = M.t().contiguous().t()  # the centroids too (a copy is made for the C call)
    assert not f_t.is_contiguous() and not M_t.is_contiguous()
    out_nc, grads_nc = _step(f_t, W, b, y, M_t, seen, aggregation="max")
    out_c, grads_c = _step(f, W, b, y, M, seen, aggregation="max")
    torch.testing.assert_close(out_nc.terms, out_c.terms, rtol=0, atol=0)
    for a, b_ in zip(grads_nc, grads_c):
        torch.testing.assert_close(a, b_, rtol=0, atol=0)


def test_bad_label_from_direct_call_raises():
    f, W, b, y, M, seen = _case(1, 6, 4, 5)
    y = y.clone()
    y[3] = 4
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=4\), found label 4 at position 3"):
        lmdl_fused_step(f, W, b, y, M, seen, delta_v=0.3, delta_d=4.0, momentum=0.6,
                        compact_coef=1.0, margin_coef=1.0, reg_coef=0.0)


def test_empty_batch_direct_call_raises():
    f, W, b, y, M, seen = _case(1, 6, 4, 5)
    with pytest.raises(ValueError, match="non-empty batch"):
        lmdl_fused_step(f[:0], W, b, y[:0], M, seen, delta_v=0.3, delta_d=4.0, momentum=0.6,
                        compact_coef=1.0, margin_coef=1.0, reg_coef=0.0)


def test_usable_only_for_supported_inputs():
    f, W, b, y, M, seen = _case(1, 6, 4, 5)
    assert lmdl_kernel.usable(f, W, b, M)
    assert not lmdl_kernel.usable(f.to(torch.bfloat16), W.to(torch.bfloat16), b.to(torch.bfloat16),
                                  M.to(torch.bfloat16))
    assert not lmdl_kernel.usable(f.float(), W, b, M)  # mixed dtypes
    with lmdl_kernel.disabled():
        assert not lmdl_kernel.usable(f, W, b, M)
        seen_elsewhere = []
        worker = threading.Thread(target=lambda: seen_elsewhere.append(lmdl_kernel.usable(f, W, b, M)))
        worker.start()
        worker.join()
        assert seen_elsewhere == [True]  # disabled() is per thread, like torch.no_grad
    assert lmdl_kernel.usable(f, W, b, M)
    big = torch.zeros(lmdl_kernel.MAX_WORK // (4 * 5) + 1, 5, dtype=torch.float64)
    assert not lmdl_kernel.usable(big, W, b, M)  # too much work for one thread


@pytest.fixture
def fresh_kernel_state(monkeypatch, tmp_path):
    """An empty cache and a forgotten kernel; the module state is restored afterwards."""
    saved = lmdl_kernel._KERNEL.lib, lmdl_kernel._KERNEL._status
    monkeypatch.setenv("UNIMARGIN_CACHE", str(tmp_path / "cache"))
    lmdl_kernel.reset()
    yield tmp_path / "cache" / "native"
    lmdl_kernel._KERNEL.lib, lmdl_kernel._KERNEL._status = saved


def test_build_is_cached_and_reused(fresh_kernel_state):
    assert lmdl_kernel.load() is not None
    built = list(fresh_kernel_state.glob("lmdl_kernel-*.so"))
    assert len(built) == 1 and lmdl_kernel.status() == f"compiled: {built[0]}"
    mtime = built[0].stat().st_mtime_ns
    lmdl_kernel.reset()
    assert lmdl_kernel.load() is not None
    assert built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt
    # no temporary files left behind: the library, its SHA-256 sidecar and its lock file
    assert sorted(p.name for p in fresh_kernel_state.iterdir()) == [
        built[0].name, built[0].name + ".lock", built[0].name + ".sha256"]


def test_disabled_by_environment(fresh_kernel_state, monkeypatch):
    monkeypatch.setenv("UNIMARGIN_CPU_KERNEL", "0")
    assert lmdl_kernel.load() is None
    assert lmdl_kernel.status() == "disabled by UNIMARGIN_CPU_KERNEL=0"
    f, W, b, y, M, seen = _case(1, 6, 4, 5)
    assert not lmdl_kernel.usable(f, W, b, M)
    head = build_head("lmdl", 4, 5).double()
    head(f.requires_grad_(), y).loss.backward()  # the PyTorch path still trains
    assert torch.isfinite(head.weight.grad).all()


def test_no_compiler_falls_back(fresh_kernel_state, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    monkeypatch.setenv("PATH", str(fresh_kernel_state))  # hides cc, gcc and clang too
    assert lmdl_kernel.load() is None
    assert lmdl_kernel.status() == "no C compiler found (set $CC)"


def test_failing_compiler_warns_and_falls_back(fresh_kernel_state, monkeypatch):
    fake = fresh_kernel_state.parent.parent / "fakecc"
    fake.write_text("#!/bin/sh\necho 'fake compiler' \"$@\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.warns(RuntimeWarning, match="building the lmdl CPU kernel failed"):
        assert lmdl_kernel.load() is None
    assert lmdl_kernel.status().startswith("build failed:")
    assert "exited with 1" in lmdl_kernel.status()
    assert not list(fresh_kernel_state.glob("*.so"))  # no half-written library left behind


def test_source_compiles_without_warnings(tmp_path):
    # -Wall -Wextra with and without -march=native (the two builds load() may attempt)
    compiler = find_compiler() or "cc"
    for extra in (lmdl_kernel.NATIVE_FLAGS, ()):
        run = subprocess.run([compiler, *lmdl_kernel.FLAGS, *extra, "-Wall", "-Wextra",
                              str(lmdl_kernel.SOURCE), "-o", str(tmp_path / "k.so"), "-lm"],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert "warning" not in run.stderr, run.stderr
