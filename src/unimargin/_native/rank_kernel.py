"""Optional compiled kernel for the separability AUC counts (SPEC §3.5; ``rank_kernel.c``).

:func:`count` returns Σ_x (2·#{positives > x} + #{positives = x}) over every score x of a
score matrix, exactly (int64), in one read of the scores and without sorting them: each
score is ranked among the sorted distinct positives through a monotone bucket table, with
exact comparisons only inside its own bucket; scores are first grouped by value range so
the table slice and the positives they meet stay in cache (the C file explains both).
:func:`unimargin.metrics.uniform._separability_unchecked` turns the count into the AUC; its
numpy sort is the reference and the fallback.

Built on first use with the system C compiler by :func:`unimargin._native.build.load_native`
(private cache directory, SHA-256 checked before loading; ``UNIMARGIN_CPU_KERNEL=0``
disables it). Without a compiler, inside :func:`disabled`, or for inputs it does not take
(:func:`usable`), the numpy implementation runs. Threads: ``torch.get_num_threads()``
(pthreads over contiguous parts of the scores, as many as torch itself would use).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import torch

from .build import NativeKernel

SOURCE = Path(__file__).with_name("rank_kernel.c")
FLAGS = ("-O3", "-std=gnu99", "-fPIC", "-shared", "-pthread", "-fno-math-errno")
# -march=native enables the AVX-512 masked compares (a compiler that rejects it builds the
# portable loop); the cache key includes the CPU's identity
NATIVE_FLAGS = ("-march=native",)
DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
# about BUCKETS_PER_VALUE buckets per distinct positive (rounded up to a power of 2): a bucket
# then holds 0-1 of them, so the vector ranking loop takes ~1 step (case (b), 1e6 x 100: 4 per
# value 0.69 s, 2 per value 0.82 s, 1 per value 0.95 s CPU)
BUCKETS_PER_VALUE = 4
MAX_BUCKETS = 1 << 24
# range buffers: about RANGES ranges (their 64-byte staging lines, 32 KB, stay in L1) of
# BUFFER_BYTES each (a full buffer is ranked against its range's table slice; bigger buffers
# amortise loading that slice: 64 KB 0.75 s, 128 KB 0.69 s at 512 ranges; 1024 ranges 0.71 s)
RANGES = 512
BUFFER_BYTES = 1 << 17
LANES = 32        # rank_kernel.c: longer buckets are binary-searched by the scalar loop
L2_BYTES = 1 << 20


def _declare(lib: ctypes.CDLL) -> None:
    ptr, long_, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        build = getattr(lib, f"rank_build_{suffix}")
        build.argtypes = [ptr, long_, real, real, long_, ptr]
        build.restype = None
        run = getattr(lib, f"rank_count_{suffix}")
        run.argtypes = [ptr, long_, ptr, ptr, ptr, long_, long_, real, real, long_, int_, long_, int_, int_, int_,
                        ptr, ptr, ptr]
        run.restype = ctypes.c_int64
        records = getattr(lib, f"rank_records_{suffix}")
        records.argtypes = [ptr, ptr, ptr, long_, long_, ptr, ptr, ptr]
        records.restype = None


_KERNEL = NativeKernel("rank_kernel", SOURCE, FLAGS, _declare, optional_flags=NATIVE_FLAGS)
status, load, reset, disabled = _KERNEL.status, _KERNEL.load, _KERNEL.reset, _KERNEL.disabled


def usable(values: np.ndarray, npos: int) -> bool:
    """Whether :func:`count` takes these scores: float32/float64, fewer than 2^31 positives
    (uint32 ranks), not :func:`disabled`, and a kernel built."""
    if values.dtype not in DTYPES or npos >= 2**31 or _KERNEL.is_disabled:
        return False
    return load() is not None


def count(values: np.ndarray, positives: np.ndarray, threads: int | None = None) -> int:
    """Σ_x (2·#{p > x} + #{p = x}) over all ``values`` x, for the sorted ``positives`` p
    (same dtype as ``values``, −0.0 already made +0.0; ±0.0 in ``values`` compare equal).

    The distinct positives d_k and c_k = #{p < d_k} give the count of one x as
    2·npos − c_j − c_{j+e} (j = #{d < x}, e = [d_j = x]); see ``rank_kernel.c``.
    """
    lib = load()
    if lib is None:
        raise RuntimeError(f"rank kernel not available ({status()})")
    values = np.ascontiguousarray(values).reshape(-1)
    npos = positives.size
    new = np.empty(npos, dtype=bool)
    new[0] = True
    np.not_equal(positives[1:], positives[:-1], out=new[1:])
    first = np.flatnonzero(new)                    # index of each distinct value in positives
    d = np.ascontiguousarray(positives[first])
    ties = first.size < npos
    c = np.append(first, npos).astype(np.uint32)   # c_k = #{p < d_k}; c_nd = npos
    nd = d.size
    nb = int(min(MAX_BUCKETS, max(64, BUCKETS_PER_VALUE << int(nd - 1).bit_length())))
    real = values.dtype.type
    pmin, pmax = d[0], d[-1]
    # scale > 0 and finite (float32: computed in float64 then rounded; any positive scale
    # keeps the map monotone, which is all exactness needs)
    span = float(pmax) - float(pmin)
    info = np.finfo(real)
    scale = real(min(max(nb / span, float(info.tiny)), float(info.max))) if span > 0 else real(1.0)
    start = np.empty(nb + 3, dtype=np.uint32)
    suffix = DTYPES[values.dtype]
    getattr(lib, f"rank_build_{suffix}")(d.ctypes.data, nd, pmin, scale, nb, start.ctypes.data)
    threads = torch.get_num_threads() if threads is None else threads
    long_buckets = int(np.diff(start).max()) > LANES
    # everything the ranking reads fits in L2: rank in place, no range buffers
    small = start.nbytes + d.nbytes + (c.nbytes if ties else 0) <= L2_BYTES
    # per-bucket records (value, count below, count above; rank_kernel.c rank_records): one
    # gather-friendly table for the in-place ranking. Only there: measured, the staged path
    # is slower with them (a table 1.5-3x larger than start/d per range)
    records = (None, None, None)                   # NULL: rank_count walks the bucket bounds
    if small:
        rv, rlt, rgt = np.empty(nb + 2, values.dtype), np.empty(nb + 2, np.uint32), np.empty(nb + 2, np.uint32)
        records = (rv.ctypes.data, rlt.ctypes.data, rgt.ctypes.data)
        getattr(lib, f"rank_records_{suffix}")(d.ctypes.data, c.ctypes.data, start.ctypes.data, nb, npos, *records)
    # ~RANGES ranges of 2^rshift buckets; 62: one range, ranked in place
    rshift = 62 if small else max(1, nb.bit_length() - 1 - max(0, int(RANGES).bit_length() - 1))
    line = 64 // values.itemsize                   # scores per staging line (rank_kernel.c LINE)
    cap = max(1, BUFFER_BYTES // 64) * line        # a whole number of lines
    total = getattr(lib, f"rank_count_{suffix}")(
        values.ctypes.data, values.size, d.ctypes.data, c.ctypes.data, start.ctypes.data, nd, npos,
        pmin, scale, nb, rshift, cap, int(ties), int(long_buckets), int(threads),
        *records)
    if total < 0:
        raise MemoryError("rank kernel: could not allocate its range buffers")
    return int(total)
