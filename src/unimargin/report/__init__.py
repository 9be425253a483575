"""Reports: A/B comparison of heads over seeds (``unimargin compare``), hyper-parameter
sweeps (``unimargin sweep``), their statistics, tables, plots and Markdown/HTML rendering.

- :mod:`.stats` — mean ± std, paired t-test (Student-t CDF via the regularized incomplete
  beta, no scipy), exact sign-flip permutation p-value.
- :mod:`.records` — :class:`RunRecord` (one run as the report sees it).
- :mod:`.tables`, :mod:`.plots`, :mod:`.render` — building blocks of the reports.
- :mod:`.compare`, :mod:`.sweep` — run and report; :mod:`.commands` — the CLI sub-commands.

See docs/compare.md for how to run and read a report.
"""

from .records import RunOutputs, RunRecord
from .stats import PairedTest, Summary, paired_t_test, sign_flip_p_value, summarize

__all__ = [
    "RunRecord",
    "RunOutputs",
    "Summary",
    "PairedTest",
    "summarize",
    "paired_t_test",
    "sign_flip_p_value",
    "run_compare",
    "write_compare_report",
    "run_sweep",
    "write_sweep_report",
]


def __getattr__(name):  # heavy parts (torch training, matplotlib) load on first use
    if name in ("run_compare", "write_compare_report", "CompareResult"):
        from . import compare

        return getattr(compare, name)
    if name in ("run_sweep", "write_sweep_report", "SweepResult"):
        from . import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'unimargin.report' has no attribute {name!r}")
