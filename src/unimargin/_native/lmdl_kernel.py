"""Optional compiled CPU kernel for the fused lmdl step (SPEC §2.6; ``lmdl_kernel.c``).

At small K the lmdl step is per-operation overhead, not arithmetic: ~90 tiny tensor
operations at 5–20 µs each, against ~20 for a plain linear + cross-entropy step. The C
file next to this module computes the same forward and hand-derived backward as
:class:`unimargin.heads.lmdl.LMDLFusedStep` in a few passes over the batch. It is built on
first use with the system C compiler (``$CC`` or ``cc``; ~1 s, needs neither Python nor
torch headers) by :func:`unimargin._native.build.load_native`, which caches it in
``$UNIMARGIN_CACHE/native`` (default ``~/.cache/unimargin/native``, private to the user) under
a hash of the source, the flags, the compiler and the CPU, and checks its owner, mode and
SHA-256 before loading it.

It is an accelerator only: the PyTorch code is the reference and the fallback. Without a
compiler, on Windows, for tensors that are not float32/float64 on the CPU, for steps
larger than :data:`MAX_WORK`, inside :func:`disabled`, or with ``UNIMARGIN_CPU_KERNEL=0``
in the environment, :class:`LMDLFusedStep` runs its PyTorch implementation.
:func:`status` says whether the kernel is built and, if not, why.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from .build import NativeKernel

SOURCE = Path(__file__).with_name("lmdl_kernel.c")
FLAGS = ("-O3", "-std=gnu99", "-fPIC", "-shared", "-fno-math-errno", "-ffp-contract=fast")
# tuned for the building CPU (~1.5x faster here); the cache key includes the CPU's identity,
# and a compiler that rejects the flag builds without it
NATIVE_FLAGS = ("-march=native",)
DTYPES = {torch.float32: "f32", torch.float64: "f64"}


def _declare(lib: ctypes.CDLL) -> None:
    ptr, long_, int_, dbl = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_double
    lib.lmdl_work_size.argtypes = [long_, long_]
    lib.lmdl_work_size.restype = long_
    lib.lmdl_scratch_size.argtypes = [long_, long_, long_]
    lib.lmdl_scratch_size.restype = long_
    for suffix in DTYPES.values():
        fwd = getattr(lib, f"lmdl_forward_{suffix}")
        fwd.argtypes = [long_] * 3 + [ptr] * 6 + [dbl] * 3 + [int_] + [dbl] * 3 + [ptr] * 5
        fwd.restype = long_
        bwd = getattr(lib, f"lmdl_backward_{suffix}")
        bwd.argtypes = [long_] * 3 + [ptr] * 5 + [int_] + [dbl] * 5 + [ptr] * 5
        bwd.restype = None
        pf = getattr(lib, f"lmdl_present_forward_{suffix}")
        pf.argtypes = [long_] * 4 + [ptr] * 11 + [dbl] * 7 + [ptr] * 8
        pf.restype = None
        pb = getattr(lib, f"lmdl_present_backward_{suffix}")
        pb.argtypes = [long_] * 4 + [ptr] * 9 + [dbl] * 6 + [ptr] * 6
        pb.restype = None
        ps = getattr(lib, f"lmdl_present_scatter_{suffix}")
        ps.argtypes = [long_] * 2 + [ptr] * 6
        ps.restype = None
    lib.lmdl_present.argtypes = [long_, long_] + [ptr] * 4
    lib.lmdl_present.restype = long_
    lib.lmdl_present_work_size.argtypes = [long_] * 3
    lib.lmdl_present_work_size.restype = long_


_KERNEL = NativeKernel("lmdl_kernel", SOURCE, FLAGS, _declare, optional_flags=NATIVE_FLAGS)
status, load, reset, disabled = _KERNEL.status, _KERNEL.load, _KERNEL.reset, _KERNEL.disabled


# The refusal of create_graph=True by the hand-derived backwards (heads/lmdl/fused.py's two
# steps and the C++ operator of lmdl_op, which receives it at load time)
NO_DOUBLE_BACKWARD = (
    "lmdl: second-order gradients (create_graph=True) are not supported through the fused "
    "single-process steps (LMDLFusedStep, LMDLPresentStep); run the head's forward inside "
    "`with unimargin.heads.lmdl.autograd_path(): ...` to use THE formula (heads/lmdl/terms.py) "
    "under autograd, which supports them")


# The kernel is single-threaded: above B·K·d·threads multiply-adds per step the PyTorch
# path (multi-threaded BLAS) is as fast or faster (docs/benchmarks.md, crossover table)
MAX_WORK = 1 << 25


def usable(features: Tensor, weight: Tensor, bias: Tensor | None, centroids: Tensor) -> bool:
    """Whether the kernel runs this step: CPU tensors of one float32/float64 dtype, a step
    small enough for one thread (:data:`MAX_WORK`), not :func:`disabled`, and a kernel built."""
    dtype = features.dtype
    if dtype not in DTYPES or features.device.type != "cpu" or weight.dtype != dtype or centroids.dtype != dtype:
        return False
    if weight.device.type != "cpu" or (bias is not None and bias.dtype != dtype) or _KERNEL.is_disabled:
        return False
    if features.shape[0] * weight.shape[0] * weight.shape[1] * torch.get_num_threads() > MAX_WORK:
        return False
    return load() is not None


def present_usable(features: Tensor, weight: Tensor, bias: Tensor | None, centroids: Tensor) -> bool:
    """Whether the present-class step (:class:`unimargin.heads.lmdl.fused.LMDLPresentStep`)
    runs: CPU tensors of one float32/float64 dtype, not :func:`disabled`, a kernel built. No
    size limit: its big products run in the (multi-threaded) BLAS, the kernel does the rest.
    The centroid buffer (updated in place in training) and the bias (read through its
    address) must be contiguous. Checked every step, so written as a few attribute tests."""
    dtype = features.dtype
    if not (dtype is weight.dtype is centroids.dtype and (bias is None or bias.dtype is dtype)):
        return False
    if dtype not in DTYPES or not (features.is_cpu and weight.is_cpu and centroids.is_contiguous()
                                   and (bias is None or bias.is_contiguous())):
        return False
    return not _KERNEL.is_disabled and (_KERNEL.lib is not None or load() is not None)


def present_classes(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(present, rows): the sorted classes of ``labels`` and each sample's row among them
    (``searchsorted(present, labels)``) in one pass; ValueError naming a bad label."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"lmdl: the compiled kernel is not available ({status()})")
    batch = labels.shape[0]
    index = torch.empty(2 * num_classes + batch, dtype=torch.int64)
    n = lib.lmdl_present(batch, num_classes, labels.data_ptr(), index.data_ptr(),
                         index[2 * num_classes:].data_ptr(), index[num_classes:].data_ptr())
    if n < 0:
        raise ValueError(f"labels must be in [0, num_classes={num_classes}), "
                         f"found label {int(labels[-n - 1])} at position {-n - 1}")
    return index[:n], index[2 * num_classes:]


def present_forward(features, weight, bias, labels, present, rows, logits, log_prob, gram, centroids, seen,
                    delta_v, delta_d, momentum, compact_coef, margin_coef, reg_coef, unit, update=False):
    """Kernel part of the present-class forward: ``(out, centroid, nearest, work)`` with
    out = (loss, CE, compact, margin, reg), centroid = m_p (P×d), nearest = j*(c) (P).
    ``update``: also write M_c ← m_c and seen_c ← True into ``centroids`` / ``seen`` in place
    (contiguous tensors of the step's dtype and bool; ValueError otherwise)."""
    lib = _KERNEL.lib
    batch, dim = features.shape
    num_classes, n = weight.shape[0], present.numel()
    out = features.new_empty(5)
    centroid = features.new_empty((n, dim))
    nearest = torch.empty(n, dtype=torch.int64)
    order = torch.empty(batch + n + 1, dtype=torch.int64)
    wsq = features.new_empty(num_classes)
    work = features.new_empty(lib.lmdl_present_work_size(batch, n, dim))
    if update and not (centroids.is_contiguous() and seen.is_contiguous() and seen.dtype == torch.bool
                       and centroids.dtype == features.dtype):
        raise ValueError("present_forward(update=True) needs contiguous centroids of the features' dtype "
                         "and a contiguous bool seen buffer")
    centroids, seen = centroids.contiguous(), seen.contiguous()
    getattr(lib, f"lmdl_present_forward_{DTYPES[features.dtype]}")(
        batch, num_classes, dim, n, features.data_ptr(), weight.data_ptr(), _address(bias), labels.data_ptr(),
        present.data_ptr(), rows.data_ptr(), logits.data_ptr(), log_prob.data_ptr(), gram.data_ptr(),
        centroids.data_ptr(), seen.data_ptr(), delta_v, delta_d, momentum, compact_coef, margin_coef, reg_coef,
        unit, out.data_ptr(), centroid.data_ptr(), nearest.data_ptr(), order.data_ptr(), wsq.data_ptr(),
        work.data_ptr(), centroids.data_ptr() if update else None, seen.data_ptr() if update else None)
    return out, centroid, nearest, work


def present_backward(features, weight, bias, labels, present, rows, nearest, centroid, work, delta_v, delta_d,
                     compact_coef, margin_coef, reg_coef, grad_loss: float, probs):
    """Kernel part of the present-class backward: turns ``probs`` (softmax, B×K) into ∂L/∂Z in
    place and returns (∂L/∂f without the ∂L/∂Z W part, pair_grad, pair_gb, ∂L/∂b of the CE
    part = column sums of ∂L/∂Z, or None without a bias) for :func:`present_scatter`."""
    lib = _KERNEL.lib
    batch, dim = features.shape
    num_classes, n = weight.shape[0], present.numel()
    grad_f = torch.empty_like(features)
    grad_mean = features.new_empty((n, dim))
    pair_grad = features.new_empty((2 * n, dim))
    pair_gb = features.new_empty(2 * n)
    grad_b = None if bias is None else features.new_empty(num_classes)
    getattr(lib, f"lmdl_present_backward_{DTYPES[features.dtype]}")(
        batch, num_classes, dim, n, features.data_ptr(), weight.data_ptr(), _address(bias), labels.data_ptr(),
        present.data_ptr(), rows.data_ptr(), nearest.data_ptr(), centroid.data_ptr(), work.data_ptr(), delta_v,
        delta_d, compact_coef, margin_coef, reg_coef, grad_loss, probs.data_ptr(), grad_f.data_ptr(),
        grad_mean.data_ptr(), pair_grad.data_ptr(), pair_gb.data_ptr(), _address(grad_b))
    return grad_f, pair_grad, pair_gb, grad_b


def present_scatter(present, nearest, pair_grad, pair_gb, grad_weight, grad_bias) -> None:
    """Adds the margin's pair gradients into rows c and j*(c) of ∂L/∂W (and ∂L/∂b), in place."""
    lib = _KERNEL.lib
    getattr(lib, f"lmdl_present_scatter_{DTYPES[grad_weight.dtype]}")(
        grad_weight.shape[1], present.numel(), present.data_ptr(), nearest.data_ptr(), pair_grad.data_ptr(),
        pair_gb.data_ptr(), grad_weight.data_ptr(), _address(grad_bias))


def _address(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def forward(features, weight, bias, labels, centroids, seen, delta_v, delta_d, momentum,
            max_aggregation, compact_coef, margin_coef, reg_coef):
    """Kernel forward: ``(loss, terms, centroid, present, logits, work)`` (see
    :class:`LMDLFusedStep`); ``work`` holds what the backward needs."""
    lib = _KERNEL.lib
    features, weight, labels = features.contiguous(), weight.contiguous(), labels.contiguous()
    bias = None if bias is None else bias.contiguous()
    batch, dim = features.shape
    num_classes = weight.shape[0]
    out = features.new_empty(5)
    logits = features.new_empty((batch, num_classes))
    centroid = features.new_empty((num_classes, dim))
    present = torch.empty(num_classes, dtype=torch.bool)
    work = features.new_empty(lib.lmdl_work_size(batch, num_classes))
    # bound to names: a temporary's memory could be freed before the C call reads it
    centroids, seen = centroids.contiguous(), seen.contiguous()
    bad = getattr(lib, f"lmdl_forward_{DTYPES[features.dtype]}")(
        batch, num_classes, dim, features.data_ptr(), weight.data_ptr(), _address(bias), labels.data_ptr(),
        centroids.data_ptr(), seen.data_ptr(), delta_v, delta_d, momentum,
        int(max_aggregation), compact_coef, margin_coef, reg_coef, out.data_ptr(), logits.data_ptr(),
        centroid.data_ptr(), present.data_ptr(), work.data_ptr())
    if bad:  # Head.forward validates first; direct callers of the Function land here
        raise ValueError(f"labels must be in [0, num_classes={num_classes}), "
                         f"found label {int(labels[bad - 1])} at position {bad - 1}")
    return out[0], out[1:], centroid, present, logits, work


def backward(features, weight, has_bias, labels, centroid, work, max_aggregation, delta_d,
             compact_coef, margin_coef, reg_coef, grad_loss: float, grad_logits):
    """Kernel backward: gradients (features, weight, bias or None)."""
    lib = _KERNEL.lib
    batch, dim = features.shape
    num_classes = weight.shape[0]
    grad_features = torch.empty_like(features)
    grad_weight = torch.empty_like(weight)
    grad_bias = features.new_empty(num_classes) if has_bias else None
    scratch = features.new_empty(lib.lmdl_scratch_size(batch, num_classes, dim))
    if grad_logits is not None:
        grad_logits = grad_logits.contiguous()
    getattr(lib, f"lmdl_backward_{DTYPES[features.dtype]}")(
        batch, num_classes, dim, features.data_ptr(), weight.data_ptr(), labels.data_ptr(),
        centroid.data_ptr(), work.data_ptr(), int(max_aggregation), delta_d, compact_coef, margin_coef,
        reg_coef, grad_loss, _address(grad_logits), grad_features.data_ptr(), grad_weight.data_ptr(),
        _address(grad_bias), scratch.data_ptr())
    return grad_features, grad_weight, grad_bias
