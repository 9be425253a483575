"""Reports: A/B comparison of heads over seeds (``unimargin compare``), hyper-parameter
sweeps (``unimargin sweep``), their statistics, tables, plots and Markdown/HTML rendering.

- :mod:`.stats` — mean ± std, paired t-test (Student-t CDF via the regularized incomplete
  beta, no scipy), 95 % t-interval, Holm adjustment, exact sign-flip permutation p-value.
- :mod:`.records` — :class:`RunRecord` (one run as the report sees it), the tune.json reader.
- :mod:`.verdict` — the SPEC §3.9 rule (better / worse / no detectable difference) and the
  verdict sentences; :mod:`.glossary` — the glossary built from metrics/keys.py;
  :mod:`.labels` — names, units, decimals and glossary links of metrics.
- :mod:`.tables`, :mod:`.plots`, :mod:`.render` — building blocks of the reports.
- :mod:`.compare`, :mod:`.sweep` — the compare and sweep documents.

Records in, document out: this package never trains and never loads a checkpoint (the runs
are made by :mod:`unimargin.experiments`).

See docs/compare.md for how to run and read a report.
"""

from .records import RunOutputs, RunRecord
from .stats import PairedTest, Summary, holm_adjust, paired_t_test, sign_flip_p_value, summarize, t_interval
from .verdict import Comparison, compare_heads

__all__ = [
    "RunRecord",
    "RunOutputs",
    "Summary",
    "PairedTest",
    "summarize",
    "paired_t_test",
    "sign_flip_p_value",
    "t_interval",
    "holm_adjust",
    "Comparison",
    "compare_heads",
    "write_compare_report",
    "write_sweep_report",
]


def __getattr__(name):  # heavy parts (matplotlib) load on first use
    if name in ("write_compare_report", "CompareResult"):
        from . import compare

        return getattr(compare, name)
    if name in ("write_sweep_report", "SweepResult"):
        from . import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'unimargin.report' has no attribute {name!r}")
