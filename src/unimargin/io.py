"""The one atomic-write helper: checkpoints, caches, predictions, configs and records.

A file is written to a temporary file in the *same directory*, flushed and fsync'ed, then
moved over the old file with ``os.replace`` (atomic on POSIX and Windows) and the directory
entry is fsync'ed. A crash or SIGKILL at any moment therefore leaves either the previous
complete file or the new complete one, never a truncated file.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from typing import Any, Callable


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


def atomic_write_bytes(data: bytes, path: str | os.PathLike,
                       before_replace: Callable[[str], None] | None = None) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir + fsync + replace).

    ``before_replace(tmp_path)`` runs after the temporary file is complete and before it
    replaces ``path`` (a hook for tests that kill a process in the middle of a save)."""
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
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int | None = 2) -> None:
    """:func:`atomic_write_text` of ``obj`` as JSON (with a final newline)."""
    atomic_write_text(json.dumps(obj, indent=indent) + "\n", path)


def atomic_write_jsonl(records: list, path: str | os.PathLike) -> None:
    """:func:`atomic_write_text` of one JSON object per line."""
    atomic_write_text("".join(json.dumps(r) + "\n" for r in records), path)


def remove_stale_temp_files(path: str | os.PathLike) -> None:
    """Delete temp files a killed write of ``path`` may have left behind."""
    path = os.fspath(path)
    pattern = os.path.join(os.path.dirname(os.path.abspath(path)),
                           "." + os.path.basename(path) + ".*.tmp")
    for stale in glob.glob(pattern):
        try:
            os.unlink(stale)
        except OSError:
            pass
