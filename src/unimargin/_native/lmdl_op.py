"""Optional C++ autograd operator for lmdl's present-class step (``lmdl_op.cpp``).

:class:`unimargin.heads.lmdl.fused.LMDLPresentStep` is a Python ``autograd.Function`` that
calls the compiled C functions of :mod:`unimargin._native.lmdl_kernel` through ctypes. At
B = 256 and K ≈ 32–256 its arithmetic costs about as much as a plain linear + cross-entropy
step, but the Python around it (the Function, ~15 allocations, four ctypes calls of ~30
arguments) costs as much again. ``torch.ops.unimargin_lmdl.present_step`` is the same
orchestration in C++ (the same ATen products, the same C functions, whose addresses it
receives from the ctypes-loaded kernel: one compiled copy of the maths), so a step makes
one Python call.

It is built on first use with the system C++ compiler (``$CXX`` or ``c++``, ~15 s once)
against the installed torch's headers and libraries, cached and verified by
:func:`unimargin._native.build.load_native` like the C kernels (the cache key includes the
torch version). Without a C++ compiler or torch headers, inside :func:`disabled`, with
``UNIMARGIN_CPU_KERNEL=0``, or when the C kernel itself is unavailable, the Python
``LMDLPresentStep`` runs: identical values (tests/heads/test_heads_lmdl_present.py runs
every check both ways).
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch

from . import lmdl_kernel
from .build import NativeKernel

SOURCE = Path(__file__).with_name("lmdl_op.cpp")
# -w: torch's headers warn under C++17 (bit-field initialisers); the build is ours, not the user's
FLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-w", "-fvisibility=hidden",
         f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
NAMESPACE = "unimargin_lmdl"
_registered_lock = threading.Lock()
_registered = False  # the operator library is loaded at most once per process (TORCH_LIBRARY)


def _torch_flags() -> tuple[str, ...]:
    """Include and link flags of the installed torch (its wheel ships the headers)."""
    root = Path(torch.__file__).parent
    lib = root / "lib"
    return (f"-I{root / 'include'}", f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu")


def _declare(lib: ctypes.CDLL) -> None:
    """Hand the C kernel's function addresses to the operator (AttributeError when the C
    kernel is unavailable: the status then says so and the Python step runs)."""
    global _registered
    _registered = True
    kernel = lmdl_kernel._KERNEL.lib  # loaded by load() first: load_native is not re-entrant
    if kernel is None:
        raise AttributeError(f"the C lmdl kernel is unavailable ({lmdl_kernel.status()})")
    names = ["lmdl_present", "lmdl_present_work_size"] + [
        f"lmdl_present_{part}_{suffix}" for suffix in ("f32", "f64") for part in ("forward", "backward", "scatter")]
    addresses = [ctypes.cast(getattr(kernel, name), ctypes.c_void_p).value for name in names]
    getattr(torch.ops, NAMESPACE).set_kernels(addresses, lmdl_kernel.NO_DOUBLE_BACKWARD)


_OP = NativeKernel("lmdl_op", SOURCE, FLAGS, _declare, language="c++", libs=_torch_flags)
status, disabled = _OP.status, _OP.disabled


def load():
    """The loaded operator library (built on first call), or None if unavailable. Loaded at
    most once per process: a second copy would register the operator namespace twice."""
    if _OP._status is None and _registered:
        return None  # reset() after a load: the operators stay registered, the library is not reloaded
    if _OP._status is None and lmdl_kernel.load() is None:
        return None
    return _OP.load()


def usable(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, centroids: torch.Tensor) -> bool:
    """Whether ``present_step`` runs this step: :func:`unimargin._native.lmdl_kernel.present_usable`
    (the same conditions), not :func:`disabled`, and the operator built."""
    if _OP.is_disabled or not lmdl_kernel.present_usable(features, weight, bias, centroids):
        return False
    return _OP.lib is not None or load() is not None


def present_step(features, weight, bias, labels, centroids, seen, delta_v, delta_d, momentum, compact_coef,
                 margin_coef, reg_coef, unit, update):
    """``[loss, logits, ce, compact, margin, reg, present, centroid]``: the outputs of
    :class:`~unimargin.heads.lmdl.fused.LMDLPresentStep` (same arguments; ``unit`` =
    :func:`~unimargin.heads.lmdl.terms.unit_roundoff`) with the terms as four scalars."""
    return torch.ops.unimargin_lmdl.present_step(features, weight, bias, labels, centroids, seen, delta_v, delta_d,
                                                 momentum, compact_coef, margin_coef, reg_coef, unit, update)
