"""The ``sweep`` report: :class:`SweepResult` (records in) -> report.md / report.html and
``sweep.png`` (document out). The runs are trained by :func:`unimargin.experiments.run_sweep`.

The parameter is either a head hyper-parameter (``build_head`` keyword, e.g. lmdl's
``delta_d``) or a training option (TrainConfig field, e.g. ``lr``, ``feat_dim``). A name
that is both (lmdl's ``momentum`` is the centroid EMA, the optimiser also has one) must be
written ``head.NAME`` or ``train.NAME``. Every other setting is the same for every value
(the head's recommended optimiser settings unless overridden), as in ``compare``.

Outputs in ``out``: ``runs/<param>=<value>/seed<k>/``, ``records.json``, ``report.md``,
``report.html`` and ``sweep.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compare import _time_sentence, add_run_footer
from .records import RunRecord, completed_runs
from .render import Document
from .labels import format_summary, higher_is_better, metric_label
from .stats import summarize
from .tables import metric_keys, sweep_table
from .verdict import n_test_of, resolution_sentence, value_verdict_lines

__all__ = ["SweepResult", "SWEEP_METRICS", "build_sweep_document", "write_sweep_report"]

SWEEP_METRICS = ["sw", "cw", "uni", "uni_at_learned", "sep_auc", "intra_class_cosine",
                 "inter_class_angle_min", "compactness_ratio", "centroid_margin_min"]


@dataclass
class SweepResult:
    head: str
    param: str
    target: str  # "head" or "train"
    values: list[Any]
    seeds: list[int]
    epochs: int
    dataset: str
    records: list[RunRecord]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    overridden: list[str] = field(default_factory=list)
    command: str = ""
    wall_time_s: float = 0.0
    out: str = "runs/sweep"
    setup: dict[str, Any] = field(default_factory=dict)
    #: the value every other value is compared with (SPEC §3.9); None = the first value
    baseline_value: Any = None


def build_sweep_document(result: SweepResult, plot_dir: str | Path | None = None) -> Document:
    from . import plots

    plot_dir = Path(plot_dir if plot_dir is not None else result.out)
    records = result.records
    keys = [k for k in SWEEP_METRICS if k in set(metric_keys(records))]
    doc = Document(f"unimargin sweep: {result.head} {result.param} on {result.dataset}")
    where = "head hyper-parameter" if result.target == "head" else "training option"
    doc.paragraph(
        f"`{result.param}` ({where} of `{result.head}`) over {', '.join(f'`{v}`' for v in result.values)}; "
        f"seeds {', '.join(map(str, result.seeds))}; backbone `{result.setup.get('model', '?')}` with "
        f"{result.setup.get('feat_dim', '?')}-d features, {result.epochs} epochs, batch "
        f"{result.setup.get('batch_size', '?')}; {len(completed_runs(records))} of {len(records)} runs completed; "
        f"{_time_sentence(records, result.wall_time_s)} Mean ± sample std over completed seeds; diverged runs excluded.")
    baseline_value = result.values[0] if result.baseline_value is None else result.baseline_value
    doc.heading("Verdict")
    doc.paragraph(f"Each value against `{result.param}={baseline_value}`, paired by seed, with the "
                  "rule of `compare` (SPEC §3.9): better or worse only with at least 3 paired seeds, "
                  "a Holm-adjusted paired-t p < 0.05 (over the values) and differences that are not "
                  "identical on every seed; otherwise no detectable difference. "
                  + resolution_sentence(n_test_of(records)))
    for title, sentences in value_verdict_lines(records, result.param, result.values, baseline_value):
        doc.paragraph(f"**{title}**")
        doc.bullets(sentences)
    doc.heading("Best value per metric")
    lines = []
    for key in keys:
        direction = higher_is_better(key)
        if direction is None:
            continue
        means = {}
        for value in result.values:
            summary = summarize([v for v in (r.value(key) for r in completed_runs(records) if r.param_value == value)
                                 if v is not None])
            if summary.mean is not None:
                means[repr(value)] = (value, summary)
        if not means:
            continue
        best_value, best_summary = (max if direction else min)(means.values(), key=lambda vs: vs[1].mean)
        lines.append(f"{metric_label(key)}: best at `{result.param}={best_value}` "
                     f"({format_summary(key, best_summary)}).")
    doc.bullets(lines or ["No completed runs."])
    doc.heading("Metrics by value")
    doc.table(sweep_table(records, result.values, keys))
    doc.heading("Plot")
    if keys:
        doc.image(plots.plot_sweep(records, result.values, keys, plot_dir / "sweep.png", result.param),
                  f"Metrics against {result.param} (mean ± std over completed seeds).")
    add_run_footer(doc, records, result.settings, result.overridden, result.command)
    return doc


def write_sweep_report(result: SweepResult) -> tuple[Path, Path]:
    return build_sweep_document(result, result.out).write(result.out, "report")
