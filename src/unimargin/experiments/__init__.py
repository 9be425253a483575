"""Experiments: grids of training runs (``compare``, ``sweep``, ``tune``), their worker
processes, reuse and ``records.json``. The report (:mod:`unimargin.report`) reads what these
write; it never trains. Arrows: cli -> experiments -> train.

- :mod:`.runner` — :class:`RunTask`, :func:`run_tasks` (process pool that dies with its
  parent, reuse by config + data fingerprint + loadable checkpoint), progress, records.
- :mod:`.compare` — :func:`run_compare` (heads × seeds).
- :mod:`.sweep` — :func:`run_sweep` (one parameter × values × seeds).
- :mod:`.tune` — per-head Optuna tuning on the validation split (``compare --tune``).
"""

from .compare import DEFAULT_DATASET, DEFAULT_EPOCHS, DEFAULT_HEADS, DEFAULT_SEEDS, resolve_heads, run_compare
from .runner import RunTask, run_tasks
from .sweep import parse_values, resolve_param, run_sweep

__all__ = ["run_compare", "run_sweep", "resolve_heads", "parse_values", "resolve_param", "RunTask", "run_tasks",
           "DEFAULT_DATASET", "DEFAULT_EPOCHS", "DEFAULT_HEADS", "DEFAULT_SEEDS"]
