"""Where unimargin keeps files it generates (MNIST-1D arrays, the built lmdl CPU kernel)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$UNIMARGIN_CACHE`` if set, else ``~/.cache/unimargin`` (created by the writer)."""
    env = os.environ.get("UNIMARGIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "unimargin"
