"""The C++ autograd operator of lmdl's present-class step (``_native/lmdl_op``): the same
step as the Python LMDLPresentStep bit for bit, its errors, and its fallback when it cannot
be built. Its equality to THE formula at every K runs in test_heads_lmdl_present.py."""

import os
import subprocess
import sys

import pytest
import torch

from unimargin._native import lmdl_kernel, lmdl_op
from unimargin.heads.lmdl import LMDLPresentStep
from unimargin.heads.lmdl.terms import unit_roundoff


@pytest.fixture(autouse=True)
def _operator():
    if lmdl_kernel.load() is None or lmdl_op.load() is None:
        if os.environ.get("CI"):  # CI installs g++: a missing operator there is a failure, not a skip
            pytest.fail(f"lmdl C++ operator unavailable under CI: {lmdl_op.status()}")
        pytest.skip(f"lmdl C++ operator unavailable: {lmdl_op.status()}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_cpp_operator_bit_identical_to_python_function(dtype, bias):
    """torch.ops.unimargin_lmdl.present_step runs the same ATen products and C functions in
    the same order as LMDLPresentStep: every output, gradient and buffer update is equal
    bit for bit (downstream use of the logits included)."""
    gen = torch.Generator().manual_seed(3)
    K, d, B = 50, 12, 40
    f = torch.randn(B, d, generator=gen, dtype=dtype, requires_grad=True)
    W = torch.randn(K, d, generator=gen, dtype=dtype, requires_grad=True)
    b = torch.randn(K, generator=gen, dtype=dtype, requires_grad=True) if bias else None
    y = torch.randint(0, K, (B,), generator=gen)
    params = [f, W] + ([b] if bias else [])
    M0, seen0 = torch.randn(K, d, generator=gen, dtype=dtype), torch.rand(K, generator=gen) < 0.5
    hp = (0.3, 3.0, 0.6, 0.7, 1.3, 0.05)
    M1, seen1 = M0.clone(), seen0.clone()
    loss, logits, *terms, present, centroid = lmdl_op.present_step(f, W, b, y, M1, seen1, *hp, unit_roundoff(f, W),
                                                                   True)
    terms = torch.stack(terms)
    got = torch.autograd.grad(loss + 0.01 * logits.square().sum(), params)
    M2, seen2, extras = M0.clone(), seen0.clone(), []
    rloss, rlogits = LMDLPresentStep.apply(f, W, b, y, M2, seen2, *hp, True, extras)
    ref = torch.autograd.grad(rloss + 0.01 * rlogits.square().sum(), params)
    assert torch.equal(loss, rloss) and torch.equal(logits, rlogits)
    assert torch.equal(terms, extras[0]) and torch.equal(present, extras[1]) and torch.equal(centroid, extras[2])
    assert torch.equal(M1, M2) and torch.equal(seen1, seen2) and not torch.equal(M1, M0)
    for g, r in zip(got, ref):
        assert torch.equal(g, r)
    assert not (terms.requires_grad or present.requires_grad or centroid.requires_grad)
    assert loss.requires_grad and logits.requires_grad


def test_cpp_operator_status_names_the_library_and_disabled_switches_it_off():
    assert lmdl_op.status().startswith("compiled: ") and "lmdl_op-" in lmdl_op.status()
    with lmdl_op.disabled():
        f, W, M = torch.randn(4, 3), torch.randn(20, 3), torch.zeros(20, 3)
        assert not lmdl_op.usable(f, W, None, M)


def test_cpp_operator_errors_name_the_problem():
    f, W = torch.randn(6, 3, requires_grad=True), torch.randn(40, 3, requires_grad=True)
    M, seen = torch.zeros(40, 3), torch.zeros(40, dtype=torch.bool)
    hp = (0.5, 1.5, 0.9, 1.0, 1.0, 0.0, unit_roundoff(f, W), False)
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=40\).*label -1 at position 3"):
        lmdl_op.present_step(f, W, None, torch.tensor([0, 1, 2, -1, 3, 4]), M, seen, *hp)
    with pytest.raises(ValueError, match="contiguous centroids and a contiguous bool seen"):
        lmdl_op.present_step(f, W, None, torch.arange(6), torch.zeros(3, 40).t(), seen, *hp)
    with pytest.raises(ValueError, match="contiguous centroids and a contiguous bool seen"):
        lmdl_op.present_step(f, W, None, torch.arange(6), M, seen.to(torch.uint8), *hp)
    with pytest.raises(ValueError, match="of one dtype"):
        lmdl_op.present_step(f, W, None, torch.arange(6), M.double(), seen, *hp)
    loss = lmdl_op.present_step(f, W, None, torch.arange(6), M, seen, *hp)[0]
    with pytest.raises(RuntimeError, match=r"create_graph=True.*autograd_path"):
        torch.autograd.grad(loss, [f], create_graph=True)


def test_without_a_cpp_compiler_the_python_step_runs(tmp_path):
    """A fresh process whose C++ compiler is missing: the operator reports why, the head
    dispatches to the Python present step past its crossover, and trains."""
    code = (
        "import shutil\n"
        "which = shutil.which\n"
        "shutil.which = lambda n, *a, **k: None if n.endswith(('c++', 'g++', 'clang++')) else which(n, *a, **k)\n"
        "import torch\n"
        "from unimargin._native import lmdl_op\n"
        "from unimargin import build_head\n"
        "from unimargin.heads.lmdl import step_path, PRESENT_MIN_K_PYTHON\n"
        "assert lmdl_op.load() is None, lmdl_op.status()\n"
        "print(lmdl_op.status())\n"
        "h = build_head('lmdl', 40, 5); f = torch.randn(16, 5, requires_grad=True)\n"
        "assert step_path(40, False, 'max', (f, h.weight, h.bias, h.centroids)) == 'present'\n"
        "assert step_path(PRESENT_MIN_K_PYTHON, False, 'max', (f, h.weight[:32], None, h.centroids[:32])) == 'fused'\n"
        "h(f, torch.arange(16)).loss.backward(); assert f.grad.isfinite().all()\n"
    )
    env = {**os.environ, "CXX": "/nonexistent/c++", "UNIMARGIN_CACHE": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "no C++ compiler found" in run.stdout
