"""THE place that compiles and loads a native (C) kernel: :func:`load_native`.

A compiled library runs code the moment it is loaded (its constructors), so nothing is
handed to ``ctypes.CDLL`` unless it passed every check below; a file that fails one is
deleted and rebuilt when it is ours, and refused (with a status naming it) when it is not.

- Cache directory: ``unimargin.cache.default_cache_dir() / "native"`` (``$UNIMARGIN_CACHE``
  respected), created with mode 0o700. It must be a real directory (not a symlink), owned
  by ``os.getuid()`` and not group/other-writable, otherwise nothing is loaded from it.
- File name: ``<name>-<key>-<platform>.so``, key = SHA-256 of the source bytes, the flags,
  the compiler path and ``--version`` output, the CPU identity (``-march=native``) and the
  Python/torch ABI. A changed source or compiler builds a new file.
- Build: into a unique temporary file in the same directory, mode 0o700, then
  :func:`os.replace` (atomic); a sidecar ``<lib>.sha256`` holds the library's SHA-256.
- Load: the library and the sidecar must be regular files owned by the user and not
  group/other-writable, and the library's SHA-256 must equal the sidecar. On Linux the
  checks run on an open file descriptor (``O_NOFOLLOW``, relative to the verified
  directory's descriptor) and ``dlopen`` loads that very descriptor (``/proc/self/fd/N``):
  the inode that was checked is the inode that runs, even if a path is swapped meanwhile.
- Concurrency: an exclusive ``flock`` on ``<lib>.lock`` (plus a thread lock) serialises
  verify-or-build per library across threads and processes (torchrun ranks building at
  once); temporaries have unique names and are removed on failure.

``UNIMARGIN_CPU_KERNEL=0`` (``false``/``off``/``no``) disables every native kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..cache import default_cache_dir

DIR_MODE = 0o700
_thread_lock = threading.Lock()


class NativeKernel:
    """One optional compiled kernel: built and loaded once, on first use, by :func:`load_native`
    (thread-safe), with a per-thread :meth:`disabled` switch. Each kernel module holds one and
    re-exports :meth:`status`, :meth:`load`, :meth:`reset` and :meth:`disabled`."""

    def __init__(self, name: str, source: Path, flags: tuple[str, ...], declare: Callable[[ctypes.CDLL], None],
                 optional_flags: tuple[str, ...] = (), *, language: str = "c",
                 libs: Callable[[], tuple[str, ...]] | tuple[str, ...] = ()):
        self.name, self.source, self.flags, self.optional_flags = name, source, flags, optional_flags
        self.declare, self.language, self.libs = declare, language, libs
        self.lib: ctypes.CDLL | None = None
        self._status: str | None = None
        self._lock = threading.Lock()
        self._local = threading.local()  # disabled() nesting depth, per thread (like torch.no_grad)

    def status(self) -> str:
        """'compiled: <path>', or why the fallback implementation is used instead."""
        self.load()
        return self._status

    def load(self) -> ctypes.CDLL | None:
        """The loaded library (built on first call), or None if unavailable."""
        if self._status is not None:
            return self.lib
        with self._lock:
            if self._status is None:
                libs = self.libs() if callable(self.libs) else self.libs
                self.lib, self._status = load_native(self.name, self.source, self.flags, self.declare,
                                                     optional_flags=self.optional_flags, language=self.language,
                                                     libs=libs)
        return self.lib

    def reset(self) -> None:
        """Forget the loaded state (the next :meth:`load` checks the environment again)."""
        with self._lock:
            self.lib, self._status = None, None

    @contextlib.contextmanager
    def disabled(self):
        """Use the fallback implementation inside this block, in this thread (A/B comparisons, tests)."""
        self._local.off = getattr(self._local, "off", 0) + 1
        try:
            yield
        finally:
            self._local.off -= 1

    @property
    def is_disabled(self) -> bool:
        """True inside :meth:`disabled` in this thread."""
        return bool(getattr(self._local, "off", 0))


def enabled() -> bool:
    """False when ``UNIMARGIN_CPU_KERNEL=0`` (or ``false``/``off``/``no``) is set."""
    return os.environ.get("UNIMARGIN_CPU_KERNEL", "1").strip().lower() not in ("0", "false", "off", "no")


def native_dir() -> Path:
    """Where built kernels live: ``default_cache_dir() / "native"``."""
    return default_cache_dir() / "native"


def find_compiler(language: str = "c") -> str | None:
    """C: ``$CC`` (default ``cc``), else ``gcc``, else ``clang`` on the PATH; C++: ``$CXX``
    (default ``c++``), else ``g++``, else ``clang++``; None if none."""
    if language == "c++":
        return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def load_native(name: str, source: Path, flags: tuple[str, ...] = (),
                declare: Callable[[ctypes.CDLL], None] | None = None, *,
                optional_flags: tuple[str, ...] = (), language: str = "c",
                libs: tuple[str, ...] = ()) -> tuple[ctypes.CDLL | None, str]:
    """Build (once, cached) and load the C (``language="c++"``: C++) file ``source`` as a
    shared library; ``libs`` (``-L``/``-l``/``-Wl`` flags) follow the source on the command line.

    Returns ``(library, "compiled: <path>")`` or ``(None, <one-line reason>)``; never
    raises for an unavailable compiler or a refused cache. ``flags`` are passed to the
    compiler (``-shared -fPIC`` etc.); ``optional_flags`` (e.g. ``-march=native``) are tried
    first together with them, and a compiler that rejects them builds without. ``declare``
    sets the ctypes signatures (an ``AttributeError``/``TypeError`` there, e.g. a missing
    symbol, is reported as the status). A failing compiler warns once (RuntimeWarning).
    """
    if not enabled():
        return None, "disabled by UNIMARGIN_CPU_KERNEL=0"
    if not sys.platform.startswith(("linux", "darwin")):
        return None, f"no kernel build on platform {sys.platform!r}"
    compiler = find_compiler(language)
    if compiler is None:
        return None, "no C++ compiler found (set $CXX)" if language == "c++" else "no C compiler found (set $CC)"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        source_bytes = Path(source).read_bytes()
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"C compiler {compiler} does not run or {source} is unreadable: {err}"
    key = hashlib.sha256(source_bytes + repr((flags, optional_flags, libs, compiler, version, _cpu_identity(),
                                              _abi())).encode()).hexdigest()
    lib_name = f"{name}-{key[:16]}-{sys.platform}.so"
    directory = native_dir()
    with _thread_lock:
        dir_fd, problem = _open_private_dir(directory)
        if dir_fd is None:
            return None, problem
        try:
            with _file_lock(dir_fd, lib_name + ".lock"):
                return _verify_or_build(dir_fd, directory, lib_name, compiler, Path(source),
                                        flags, optional_flags, name, declare, libs)
        except OSError as err:
            return None, f"cannot use the cache directory {directory}: {err}"
        finally:
            os.close(dir_fd)


def _verify_or_build(dir_fd, directory, lib_name, compiler, source, flags, optional_flags, name, declare, libs=()):
    path = directory / lib_name
    built = False
    while True:
        fd, problem, ours = _open_verified(dir_fd, lib_name)
        if fd is not None:
            break
        if problem is not None:  # present but failed a check
            if not ours:
                return None, f"refusing {path}: {problem} (not owned by this user; remove it or set UNIMARGIN_CACHE)"
            if built:  # what we just built fails its own check: never load it
                return None, f"refusing {path}: {problem} right after building it"
            for stale in (lib_name, lib_name + ".sha256"):
                _unlink(dir_fd, stale)
        elif built:
            return None, f"{path} disappeared right after building it"
        error = (_compile(dir_fd, directory, lib_name, compiler, source, flags + optional_flags, libs)
                 and _compile(dir_fd, directory, lib_name, compiler, source, flags, libs)) if optional_flags else \
            _compile(dir_fd, directory, lib_name, compiler, source, flags, libs)
        if error:
            # a compiler that is present but fails is unexpected: say so once
            warnings.warn(f"unimargin: building the {name.removesuffix('_kernel')} CPU kernel failed, "
                          f"using the PyTorch implementation instead: {error}", RuntimeWarning, stacklevel=4)
            return None, f"build failed: {error}"
        built = True
    loadable = _loadable_path(fd, path)
    try:
        lib = ctypes.CDLL(loadable)
    except OSError as err:
        os.close(fd)
        return None, f"cannot load {path}: {err}"
    if loadable == str(path):
        os.close(fd)
    # else the descriptor stays open for the life of the process: the dynamic loader
    # recognises loaded libraries by name, and a reused /proc/self/fd/N would name another file
    if declare is not None:
        try:
            declare(lib)
        except (AttributeError, TypeError) as err:
            return None, f"{path} does not export the expected symbols: {err}"
    return lib, f"compiled: {path}"


def _open_private_dir(directory: Path) -> tuple[int | None, str | None]:
    """An O_DIRECTORY|O_NOFOLLOW descriptor of ``directory`` (created 0o700 if missing),
    or (None, why it is refused): not a real directory, not ours, or writable by others."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            pass
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        if err.errno == errno.ELOOP or (err.errno == errno.ENOTDIR and directory.is_symlink()):
            return None, f"refusing cache directory {directory}: it is a symlink"
        return None, f"cache directory {directory} is not usable ({err}); set UNIMARGIN_CACHE"
    info = os.fstat(fd)
    problem = None
    if info.st_uid != os.getuid():
        problem = f"owned by uid {info.st_uid}, not by this user (uid {os.getuid()})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"writable by group or others (mode {stat.S_IMODE(info.st_mode):o}); chmod 700 it"
    if problem:
        os.close(fd)
        return None, f"refusing cache directory {directory}: {problem}"
    return fd, None


def _open_verified(dir_fd: int, lib_name: str) -> tuple[int | None, str | None, bool]:
    """Open and check the library: (fd, None, True) when it passes; (None, None, True) when
    it does not exist; (None, problem, ours) when it (or its sidecar) fails a check, with
    ``ours`` = whether the failing files are ours to delete."""
    try:
        fd = os.open(lib_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, None, True
    except OSError as err:  # ELOOP: a symlink with the library's name
        info = _lstat(dir_fd, lib_name)
        return None, f"cannot be opened safely ({err})", info is not None and info.st_uid == os.getuid()
    try:
        problem = _file_problem(os.fstat(fd))
        if problem:
            return None, f"the library is {problem}", os.fstat(fd).st_uid == os.getuid()
        try:
            side = os.open(lib_name + ".sha256", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as err:
            return None, f"its sidecar {lib_name}.sha256 is missing or unsafe ({err.strerror})", True
        try:
            problem = _file_problem(os.fstat(side))
            if problem:
                return None, f"its sidecar {lib_name}.sha256 is {problem}", os.fstat(side).st_uid == os.getuid()
            expected = os.read(side, 200).decode("ascii", "replace").strip()
        finally:
            os.close(side)
        actual = _sha256_fd(fd)
        if actual != expected:
            return None, f"its SHA-256 {actual[:16]}... does not match the sidecar ({expected[:16]!r}...)", True
        fd, keep = None, fd
        return keep, None, True
    finally:
        if fd is not None:
            os.close(fd)


def _file_problem(info: os.stat_result) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != os.getuid():
        return f"owned by uid {info.st_uid}, not by this user (uid {os.getuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _compile(dir_fd, directory: Path, lib_name: str, compiler: str, source: Path,
             flags: tuple[str, ...], libs: tuple[str, ...] = ()) -> str | None:
    """Build ``lib_name`` atomically (unique temporary file, then rename) with its sidecar;
    an error message or None. The caller holds the library's lock."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{lib_name}.", suffix=".tmp", dir=directory)
        os.close(fd)
    except OSError as err:
        return f"cache directory {directory} is not writable ({err}); set UNIMARGIN_CACHE"
    tmp_side = None
    try:
        cmd = [compiler, *flags, str(source), "-o", tmp, *libs, "-lm"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            return f"{' '.join(cmd)} exited with {run.returncode}: {run.stderr.strip()[-2000:]}"
        os.chmod(tmp, 0o700)  # the linker may have recreated the file with the umask's mode
        with open(tmp, "rb") as built:
            digest = _sha256_fd(built.fileno())
        fd, tmp_side = tempfile.mkstemp(prefix=f".{lib_name}.", suffix=".sha256.tmp", dir=directory)
        with os.fdopen(fd, "w") as side:
            side.write(digest + "\n")
        # sidecar first: a reader holding no lock never sees a new library with an old sidecar
        os.replace(tmp_side, directory / (lib_name + ".sha256"))
        os.replace(tmp, directory / lib_name)
        return None
    except (OSError, subprocess.SubprocessError) as err:
        return str(err)
    finally:
        for leftover in (tmp, tmp_side):
            if leftover is not None and os.path.exists(leftover):
                os.unlink(leftover)


class _file_lock:
    """Exclusive ``flock`` on ``dir_fd/name`` (created 0o600, no symlink followed)."""

    def __init__(self, dir_fd: int, name: str):
        self.dir_fd, self.name, self.fd = dir_fd, name, None

    def __enter__(self):
        self.fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=self.dir_fd)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _loadable_path(fd: int, path: Path) -> str:
    """The path dlopen gets: the verified descriptor itself where the OS exposes it."""
    proc = f"/proc/self/fd/{fd}"
    return proc if os.path.exists(proc) else str(path)


def _sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    os.lseek(fd, 0, os.SEEK_SET)
    return digest.hexdigest()


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _cpu_identity() -> str:
    """What distinguishes CPUs for ``-march=native`` (a cache shared by several machines)."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [ln for ln in info if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _abi() -> str:
    """Python and torch identity: a kernel built for one interpreter is not reused by another."""
    return f"{sys.implementation.cache_tag} {platform.machine()} torch {torch.__version__}"
