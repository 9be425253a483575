"""Atomic checkpoint files.

A checkpoint is written to a temporary file in the *same directory*, flushed and fsync'ed,
then moved over the old file with ``os.replace`` (atomic on POSIX and Windows) and the
directory entry is fsync'ed. A crash or SIGKILL at any moment therefore leaves either the
previous complete checkpoint or the new complete one, never a truncated file.
"""

from __future__ import annotations

import glob
import io
import os
import tempfile
import time
from typing import Any

import torch

CHECKPOINT_FORMAT = "unimargin-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "model", "epoch", "config", "history")

# Test hook: seconds to sleep after the temp file is written and before it is renamed,
# so tests can SIGKILL a process in the middle of a save. Never set in normal use.
_SLOW_SAVE_ENV = "UNIMARGIN_TEST_SLOW_SAVE"


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir + fsync + replace)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            delay = float(os.environ.get(_SLOW_SAVE_ENV, "0") or 0)
            if delay > 0:
                time.sleep(delay)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def remove_stale_temp_files(path: str | os.PathLike) -> None:
    """Delete temp files a killed save of ``path`` may have left behind."""
    path = os.fspath(path)
    pattern = os.path.join(os.path.dirname(os.path.abspath(path)),
                           "." + os.path.basename(path) + ".*.tmp")
    for stale in glob.glob(pattern):
        try:
            os.unlink(stale)
        except OSError:
            pass


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Serialise ``state`` (plus format tag) with ``torch.save`` and write it atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    remove_stale_temp_files(path)
    atomic_write_bytes(buffer.getvalue(), path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises ValueError naming the file when it is missing, unreadable, truncated/corrupt or
    not a unimargin checkpoint. Only tensors and plain Python containers are unpickled
    (``weights_only=True``).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} is not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ValueError(f"cannot read checkpoint {path!r}: {exc.strerror or exc}") from exc
    except Exception as exc:  # zip/pickle errors of many kinds for truncated files
        raise ValueError(f"checkpoint {path!r} is corrupt or not a unimargin checkpoint "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                         ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path!r} is not a unimargin checkpoint (no '{CHECKPOINT_FORMAT}' tag)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path!r} has format version {payload.get('version')!r}; "
                         f"this unimargin reads version {CHECKPOINT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint {path!r} is incomplete: missing {missing}")
    return payload
