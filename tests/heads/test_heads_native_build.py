"""The one native-kernel loader (unimargin._native.build.load_native): a private cache,
integrity-checked libraries, and nothing loaded that failed a check (issue 11, item 12).

A "planted" library here is a shared object whose constructor writes a marker file: if it
were ever handed to the dynamic loader the marker would appear, whatever happens after.
"""

import ctypes
import hashlib
import multiprocessing
import os
import stat
import subprocess
import textwrap
import threading

import pytest

from unimargin._native import build, lmdl_kernel
from unimargin._native.build import find_compiler, load_native

pytestmark = pytest.mark.skipif(find_compiler() is None and not os.environ.get("CI"),
                                reason="no C compiler")  # CI has one: there the tests must run

FLAGS = ("-O1", "-fPIC", "-shared")


def _declare(lib):
    lib.triple.argtypes = [ctypes.c_int]
    lib.triple.restype = ctypes.c_int


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIMARGIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UNIMARGIN_CPU_KERNEL", raising=False)
    return tmp_path / "cache" / "native"


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "triple.c"
    path.write_text("int triple(int x) { return 3 * x; }\n")
    return path


def _library(status: str):
    assert status.startswith("compiled: "), status
    return build.Path(status.removeprefix("compiled: "))


def _plant(path, marker, tmp_path, mode=0o700):
    """Replace ``path`` by a library whose constructor creates ``marker``."""
    src = tmp_path / "planted.c"
    src.write_text(textwrap.dedent(f"""
        #include <stdio.h>
        __attribute__((constructor)) static void planted(void) {{
            FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}
        }}
        int triple(int x) {{ return -1; }}
    """))
    out = tmp_path / "planted.so"
    subprocess.run([find_compiler(), *FLAGS, str(src), "-o", str(out)], check=True)
    os.replace(out, path)
    os.chmod(path, mode)


def _sidecar(path):
    return path.with_name(path.name + ".sha256")


def test_builds_private_cache_with_sidecar(cache, source):
    lib, status = load_native("triple", source, FLAGS, _declare)
    assert lib is not None and lib.triple(7) == 21
    path = _library(status)
    assert path.parent == cache and path.name.startswith("triple-")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert not path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    assert _sidecar(path).read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    mtime = path.stat().st_mtime_ns
    lib2, status2 = load_native("triple", source, FLAGS, _declare)
    assert status2 == status and lib2.triple(2) == 6 and path.stat().st_mtime_ns == mtime  # reused
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [path.name, path.name + ".sha256", path.name + ".lock"])  # no temporaries left


def test_cache_key_follows_source_and_flags(cache, source):
    first = _library(load_native("triple", source, FLAGS, _declare)[1])
    other_flags = _library(load_native("triple", source, FLAGS + ("-DX=1",), _declare)[1])
    source.write_text("int triple(int x) { return x + x + x; }\n")
    other_source = _library(load_native("triple", source, FLAGS, _declare)[1])
    assert len({first, other_flags, other_source}) == 3


@pytest.mark.parametrize("how", ["stale_sidecar", "no_sidecar", "matching_sidecar_group_writable"])
def test_planted_library_never_runs_and_is_rebuilt(cache, source, tmp_path, how):
    path = _library(load_native("triple", source, FLAGS, _declare)[1])
    marker = tmp_path / "constructor_ran"
    _plant(path, marker, tmp_path, mode=0o770 if how.endswith("group_writable") else 0o700)
    if how == "no_sidecar":
        _sidecar(path).unlink()
    elif how.startswith("matching_sidecar"):
        _sidecar(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    lib, status = load_native("triple", source, FLAGS, _declare)
    assert not marker.exists(), "the planted library's constructor ran"
    assert lib is not None and lib.triple(5) == 15 and _library(status) == path  # rebuilt, ours
    assert _sidecar(path).read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_planted_lmdl_kernel_refused_and_kernel_rebuilt(cache, tmp_path):
    saved = lmdl_kernel._KERNEL.lib, lmdl_kernel._KERNEL._status
    try:
        lmdl_kernel.reset()
        path = _library(lmdl_kernel.status())
        marker = tmp_path / "constructor_ran"
        _plant(path, marker, tmp_path)
        lmdl_kernel.reset()
        assert lmdl_kernel.load() is not None and not marker.exists()
        assert _library(lmdl_kernel.status()) == path
        import torch

        from unimargin.heads.lmdl import lmdl_fused_step

        gen = torch.Generator().manual_seed(0)
        f, W, b = torch.randn(12, 3, generator=gen), torch.randn(4, 3, generator=gen), torch.zeros(4)
        y, M, seen = torch.arange(12) % 4, torch.zeros(4, 3), torch.zeros(4, dtype=torch.bool)
        assert lmdl_kernel.usable(f, W, b, M)
        kw = dict(delta_v=0.5, delta_d=1.5, momentum=0.9, compact_coef=1.0, margin_coef=1.0, reg_coef=0.001)
        with_kernel = lmdl_fused_step(f, W, b, y, M, seen, **kw).loss
        with lmdl_kernel.disabled():
            reference = lmdl_fused_step(f, W, b, y, M, seen, **kw).loss
        torch.testing.assert_close(with_kernel, reference)
    finally:
        lmdl_kernel._KERNEL.lib, lmdl_kernel._KERNEL._status = saved


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_library_owned_by_someone_else_is_refused_and_kept(cache, source, tmp_path):
    path = _library(load_native("triple", source, FLAGS, _declare)[1])
    marker = tmp_path / "constructor_ran"
    _plant(path, marker, tmp_path)
    _sidecar(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    os.chown(path, 4242, -1)
    lib, status = load_native("triple", source, FLAGS, _declare)
    assert lib is None and not marker.exists()
    assert status.startswith(f"refusing {path}: ") and "owned by uid 4242" in status
    assert path.exists()  # not ours: left for its owner


def test_sidecar_mismatch_refused_then_rebuilt(cache, source, tmp_path):
    path = _library(load_native("triple", source, FLAGS, _declare)[1])
    original = path.read_bytes()
    _sidecar(path).write_text("0" * 64 + "\n")
    loaded = []
    real_cdll = build.ctypes.CDLL

    def spy(name, *a, **k):
        loaded.append(os.path.realpath(name))
        return real_cdll(name, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build.ctypes, "CDLL", spy)
        # what the check says, before the rebuild
        fd = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert build._open_verified(fd, path.name)[1].startswith("its SHA-256")
        finally:
            os.close(fd)
        lib, status = load_native("triple", source, FLAGS, _declare)
    assert lib is not None and lib.triple(1) == 3
    assert len(loaded) == 1  # the mismatching file was deleted, never loaded; the rebuild was
    assert _sidecar(path).read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.read_bytes() == original or path.stat().st_size > 0


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_writable_by_others_cache_dir_refused(cache, source, mode):
    cache.mkdir(parents=True)
    os.chmod(cache, mode)
    lib, status = load_native("triple", source, FLAGS, _declare)
    assert lib is None
    assert status == (f"refusing cache directory {cache}: writable by group or others "
                      f"(mode {mode:o}); chmod 700 it")
    assert list(cache.iterdir()) == []  # nothing built into it either


def test_cache_dir_owned_by_someone_else_refused(cache, source, monkeypatch):
    cache.mkdir(parents=True, mode=0o700)
    real_uid = os.getuid()
    monkeypatch.setattr(build.os, "getuid", lambda: real_uid + 1)
    lib, status = load_native("triple", source, FLAGS, _declare)
    assert lib is None
    assert status == (f"refusing cache directory {cache}: owned by uid {real_uid}, "
                      f"not by this user (uid {real_uid + 1})")


def test_symlinked_cache_dir_refused(cache, source, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    cache.parent.mkdir(parents=True)
    cache.symlink_to(elsewhere)
    lib, status = load_native("triple", source, FLAGS, _declare)
    assert lib is None and status == f"refusing cache directory {cache}: it is a symlink"


def test_symlink_with_the_library_name_is_replaced(cache, source, tmp_path):
    path = _library(load_native("triple", source, FLAGS, _declare)[1])
    marker = tmp_path / "constructor_ran"
    planted = tmp_path / "planted_target.so"
    _plant(planted, marker, tmp_path)
    path.unlink()
    path.symlink_to(planted)
    _sidecar(path).write_text(hashlib.sha256(planted.read_bytes()).hexdigest() + "\n")
    lib, status = load_native("triple", source, FLAGS, _declare)
    assert not marker.exists() and lib.triple(2) == 6
    assert not path.is_symlink()


def test_missing_symbol_reported(cache, source):
    def declare(lib):
        lib.no_such_function.restype = ctypes.c_int

    lib, status = load_native("triple", source, FLAGS, declare)
    assert lib is None and "does not export the expected symbols" in status


def test_disabled_by_environment(cache, source, monkeypatch):
    monkeypatch.setenv("UNIMARGIN_CPU_KERNEL", "off")
    assert load_native("triple", source, FLAGS, _declare) == (None, "disabled by UNIMARGIN_CPU_KERNEL=0")
    assert not cache.exists()


def test_optional_flags_dropped_when_rejected(cache, source):
    lib, status = load_native("triple", source, FLAGS, _declare, optional_flags=("-fno-such-flag-xyz",))
    assert lib is not None and lib.triple(3) == 9


def test_concurrent_threads_build_once(cache, source):
    results = []
    threads = [threading.Thread(target=lambda: results.append(load_native("triple", source, FLAGS, _declare)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = {status for _, status in results}
    assert len(statuses) == 1 and all(lib is not None and lib.triple(4) == 12 for lib, _ in results)


def _build_in_child(source, barrier, queue):
    barrier.wait()  # every process starts building at the same moment
    lib, status = load_native("triple", source, FLAGS, _declare)
    queue.put((status, lib is not None and lib.triple(11) == 33))


def test_concurrent_processes_build(cache, source):
    ctx = multiprocessing.get_context("fork")  # torch is already imported: no 3 s start-up each
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(source, barrier, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert all(ok for _, ok in results) and len({status for status, _ in results}) == 1, results
    libs = [p for p in cache.iterdir() if p.suffix == ".so"]
    assert len(libs) == 1 and not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
