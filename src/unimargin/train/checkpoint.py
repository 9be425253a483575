"""Checkpoint files: ``torch.save`` payloads written atomically by :mod:`unimargin.io`
(a crash or SIGKILL at any moment leaves the previous complete checkpoint or the new one)
and loaded with ``weights_only=True``."""

from __future__ import annotations

import io
import os
from typing import Any, Callable

import torch

from unimargin.io import atomic_write_bytes, remove_stale_temp_files

CHECKPOINT_FORMAT = "unimargin-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "model", "epoch", "config", "history")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike,
                    before_replace: Callable[[str], None] | None = None) -> None:
    """Serialise ``state`` (plus format tag) with ``torch.save`` and write it atomically
    (``before_replace``: see :func:`unimargin.io.atomic_write_bytes`)."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    remove_stale_temp_files(path)
    atomic_write_bytes(buffer.getvalue(), path, before_replace)


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
