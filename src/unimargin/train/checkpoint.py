"""Checkpoint files: ``torch.save`` payloads written atomically by :mod:`unimargin.io`
(a crash or SIGKILL at any moment leaves the previous complete checkpoint or the new one)
and loaded with ``weights_only=True``.

Every payload carries ``sha256``, a digest of its content (:func:`payload_digest`: every
tensor's dtype, shape and bytes, every other value's type and repr, in key order), checked
on load: a checkpoint whose bytes changed after it was written (a flipped bit inside a
weight tensor loads without any zip or pickle error) is refused, naming the file. The
digest is of the content, not of the file bytes, so it is independent of how torch lays
out the zip archive.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any, Callable

import torch

from unimargin.io import atomic_write_bytes, remove_stale_temp_files

CHECKPOINT_FORMAT = "unimargin-checkpoint"
CHECKPOINT_VERSION = 2       # 2: + sha256 of the payload; version 1 (no digest) still loads
REQUIRED_KEYS = ("format", "version", "model", "epoch", "config", "history")
DIGEST_KEY = "sha256"


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            h.update(f"K{type(key).__name__}:{key!r}".encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``payload`` without its :data:`DIGEST_KEY` entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != DIGEST_KEY})
    return h.hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike,
                    before_replace: Callable[[str], None] | None = None) -> None:
    """Serialise ``state`` (plus format tag) with ``torch.save`` and write it atomically
    (``before_replace``: see :func:`unimargin.io.atomic_write_bytes`)."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    payload[DIGEST_KEY] = payload_digest(payload)
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
    if payload.get("version") not in (1, CHECKPOINT_VERSION):
        raise ValueError(f"checkpoint {path!r} has format version {payload.get('version')!r}; "
                         f"this unimargin reads versions 1 to {CHECKPOINT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if payload.get("version", 1) >= 2 and DIGEST_KEY not in payload:
        missing.append(DIGEST_KEY)
    if missing:
        raise ValueError(f"checkpoint {path!r} is incomplete: missing {missing}")
    if DIGEST_KEY in payload and payload[DIGEST_KEY] != payload_digest(payload):
        raise ValueError(f"checkpoint {path!r} is corrupt: its content does not match the "
                         f"SHA-256 it was written with (changed on disk after saving); "
                         f"restore it from a copy or retrain")
    return payload
