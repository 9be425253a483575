"""The ``compare`` report: :class:`CompareResult` (records in) -> report.md / report.html
(document out). The runs themselves are trained by :func:`unimargin.experiments.run_compare`;
this module never trains and never loads a checkpoint.

Protocol (docs/compare.md): every head trains the same backbone on the same data, epochs,
batch size and seeds; each uses its own recommended optimiser settings unless overridden.
Diverged (or failed) runs are listed and excluded from every mean, std and paired test. The
baseline of the paired tests is ``softmax`` when it is among the heads, else the first head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from unimargin.metrics.keys import KEYS

from .records import RunOutputs, RunRecord, completed_runs
from .render import Document
from .tables import (
    PAIRED_METRICS,
    diverged_table,
    format_p,
    format_summary,
    higher_is_better,
    metric_keys,
    metric_label,
    paired_for,
    paired_table,
    per_metric_table,
    runtime_table,
    settings_table,
    summary_for,
    summary_table,
    threshold_table,
)

__all__ = [
    "CompareResult",
    "build_compare_document",
    "write_compare_report",
    "settings_from_records",
    "add_run_footer",
]

# Verification keys shown in the open-set table: the directed verif_* keys of the vocabulary.
_OPEN_SET_VERIF_KEYS = [k for k, v in KEYS.items() if k.startswith("verif_") and v.direction]
_OPEN_SET_REJECT_KEYS = ["reject_auroc", "reject_open_set_accuracy", "reject_known_accept_rate",
                         "reject_unknown_reject_rate"]


@dataclass
class CompareResult:
    """Everything the report needs; built by :func:`unimargin.experiments.run_compare` or by
    hand in tests."""

    dataset: str
    heads: list[str]
    seeds: list[int]
    epochs: int
    records: list[RunRecord]
    outputs: list[RunOutputs] = field(default_factory=list)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    overridden: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    unknown_class_names: list[str] | None = None
    command: str = ""
    wall_time_s: float = 0.0
    out: str = "runs/compare"
    setup: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> str:
        return "softmax" if "softmax" in self.heads else self.heads[0]


def settings_from_records(records: Sequence[RunRecord], fallback: dict[str, dict[str, Any]],
                          key_of=lambda record: record.head) -> dict[str, dict[str, Any]]:
    """The optimiser settings the runs actually used (their saved configs), per group.

    Reused runs may come from an earlier invocation with other defaults, so the report
    states what each run used; a group whose runs disagree gets ``varies_across_seeds``.
    The setting names are those of ``fallback`` (the experiment's resolved settings).
    """
    out = {name: dict(values) for name, values in fallback.items()}
    names = list(dict.fromkeys(k for values in fallback.values() for k in values if k != "varies_across_seeds"))
    seen: dict[str, set] = {}
    for record in records:
        if not record.config:
            continue
        values = {k: record.config.get(k) for k in names}
        if "head_params" in values:
            values["head_params"] = dict(values["head_params"] or {})
        name = key_of(record)
        seen.setdefault(name, set()).add(json.dumps(values, sort_keys=True, default=str))
        if len(seen[name]) == 1:
            out[name] = values
    for name, variants in seen.items():
        if len(variants) > 1:
            out[name]["varies_across_seeds"] = True
    return out


# --------------------------------------------------------------------------- report
def _time_sentence(records: Sequence[RunRecord], wall_time_s: float) -> str:
    total = sum(r.runtime_s for r in records)
    reused = sum(1 for r in records if r.reused)
    text = f"Training time summed over runs {total:.0f} s; wall time {wall_time_s:.0f} s"
    if reused:
        text += f" (this invocation; {reused} runs were reused from an earlier one)"
    return text + "."


def _sentence_for(result: CompareResult, head: str, key: str) -> str | None:
    seeds, test = paired_for(result.records, head, result.baseline, key)
    if test.n == 0:
        return None
    scale, unit = (100.0, " points") if key in ("sw", "cw", "uni", "uni_at_learned") else (1.0, "")
    head_summary = summary_for(result.records, head, key)
    base_summary = summary_for(result.records, result.baseline, key)
    direction = higher_is_better(key)
    p = test.t_p_value
    if p is None:
        significance = "one paired seed, no test"
    elif p < 0.05:
        significance = f"paired t p = {format_p(p)}, larger than seed noise"
    else:
        significance = f"paired t p = {format_p(p)}, within seed noise"
    delta = test.mean_difference * scale
    better = "" if direction is None or delta == 0 else (" (better)" if (delta > 0) == direction else " (worse)")
    return (f"`{head}` vs `{result.baseline}` on {metric_label(key)}: "
            f"{format_summary(key, head_summary)} vs {format_summary(key, base_summary)}, "
            f"mean Δ {delta:+.{2 if unit else 4}f}{unit}{better} over {test.n} paired seeds "
            f"({significance}; sign-flip p = {format_p(test.sign_flip_p)}).")


def build_compare_document(result: CompareResult, plot_dir: str | Path | None = None) -> Document:
    """The report as a :class:`Document` (plots are written into ``plot_dir``)."""
    from . import plots

    plot_dir = Path(plot_dir if plot_dir is not None else result.out)
    records = result.records
    doc = Document(f"unimargin compare: {', '.join(result.heads)} on {result.dataset}")
    n_ok = len(completed_runs(records))
    setup = result.setup
    doc.paragraph(
        f"Dataset `{result.dataset}` ({setup.get('num_classes', len(result.class_names))} known classes, "
        f"{setup.get('n_train', '?')} train / {setup.get('n_test', '?')} test samples"
        + (f", {setup['n_unknown']} samples of held-out classes {', '.join(result.unknown_class_names or [])}"
           if setup.get("n_unknown") else "")
        + f"). Backbone `{setup.get('model', '?')}` with {setup.get('feat_dim', '?')}-d features, "
        f"{result.epochs} epochs, batch {setup.get('batch_size', '?')}, seeds {', '.join(map(str, result.seeds))}. "
        f"{n_ok} of {len(records)} runs completed. {_time_sentence(result.records, result.wall_time_s)}"
    )
    doc.paragraph(
        "Every head trains the same backbone with the same data, epochs, batch size and seeds; "
        "each uses its own recommended optimiser settings unless overridden (see *Optimiser "
        "settings*). Means and standard deviations (sample std, ddof = 1) are over completed "
        "seeds; diverged runs are listed and excluded. Paired tests compare each head with "
        f"`{result.baseline}` seed by seed (two-sided paired t-test and exact sign-flip "
        f"permutation test; with {len(result.seeds)} seeds the smallest possible sign-flip p is "
        f"{2 / 2 ** len(result.seeds):.4g})."
    )

    doc.heading("Verdict")
    sentences = []
    for head in result.heads:
        if head == result.baseline:
            continue
        for key in ("sw", "uni"):
            sentence = _sentence_for(result, head, key)
            if sentence:
                sentences.append(sentence)
    for head in result.heads:
        loss = summary_for(records, head, "uni_loss_learned")
        if loss.mean is not None:
            sentences.append(
                f"`{head}` learned threshold: Uni(t*) − Uni(t_l) = {format_summary('uni_loss_learned', loss)} points "
                f"(on average {'within' if loss.mean <= 0.01 else 'more than'} 1 point of Uni at t*).")
    doc.bullets(sentences or ["No paired comparison available (need the baseline and another head with completed runs)."])

    doc.heading("Summary")
    doc.table(summary_table(records))

    doc.heading(f"Paired comparison with {result.baseline}")
    doc.paragraph(
        f"Δ = head − {result.baseline} on the same seed. Verdict 'better'/'worse' follows each "
        "metric's direction; 'p < 0.05' refers to the paired t-test.")
    available = set(metric_keys(records))
    for key in PAIRED_METRICS:
        if key in available:
            doc.heading(metric_label(key), level=3)
            doc.table(paired_table(records, key, result.baseline))

    doc.heading("Learned threshold vs t*")
    doc.paragraph(
        "SPEC §3.4: for heads with a learned unified threshold t_l (bce-u: its bias b; bce-d: 0) "
        "Uni(t_l) is the uniform accuracy obtained by deploying t_l as is; Uni(t*) − Uni(t_l) is "
        "the price of not tuning it (primary figure), |t_l − t*| and its fraction of the score "
        "spread (median p − median n) are secondary (the optimal range of t can be wide).")
    doc.table(threshold_table(records))

    if result.unknown_class_names:
        doc.heading("Open set: held-out classes")
        threshold_sources = sorted({str(r.open_set.get("reject_threshold_source")) for r in completed_runs(records)
                                    if r.open_set})
        doc.paragraph(
            f"Training never saw classes {', '.join(result.unknown_class_names)}. Verification (SPEC §3.7): "
            "cosine similarity of pairs of unknown-class test features, genuine = same class. "
            "Rejection: AUROC of max_k S[i,k] between known-class test samples and unknown samples, and "
            "§2.9 open-set prediction at the head's threshold (learned threshold where the head has one, "
            f"else t* of the known test set; used here: {', '.join(threshold_sources) or '—'}).")
        doc.table(summary_table(records, _OPEN_SET_VERIF_KEYS))
        doc.table(summary_table(records, _OPEN_SET_REJECT_KEYS))

    doc.heading("Plots")
    curves = plots.plot_training_curves(records, plot_dir / "training_curves.png")
    doc.image(curves, "Training curves: mean over completed seeds (thick), single seeds (thin), diverged (dotted).")
    if result.outputs:
        doc.image(plots.plot_score_histograms(result.outputs, plot_dir / "score_histograms.png"),
                  "Positive metrics p and hardest negative metrics n on the test set (first completed seed per "
                  "head), with t* (dashed) and the learned threshold (green).")
        doc.image(plots.plot_pca(result.outputs, plot_dir / "features_pca.png", result.class_names),
                  "Test features projected on their first two principal components, coloured by class.")
        doc.image(plots.plot_centroid_margins(result.outputs, plot_dir / "centroid_margins.png", result.class_names),
                  "Centroid margin per class (SPEC §3.6; heads with a linear decision only).")

    doc.heading("Per-metric tables")
    for key in metric_keys(records):
        doc.heading(metric_label(key), level=3)
        doc.table(per_metric_table(records, key))

    doc.heading("Runtime")
    doc.table(runtime_table(records))

    add_run_footer(doc, records, result.settings, result.overridden, result.command)
    return doc


def add_run_footer(doc: Document, records, settings, overridden, command: str) -> None:
    """The closing sections shared by the compare and sweep reports: diverged runs (never
    averaged in), the optimiser settings each head trained with, the exact rerun command."""
    doc.heading("Diverged or failed runs")
    table = diverged_table(records)
    if table is None:
        doc.paragraph("None: every run completed.")
    else:
        doc.table(table)

    doc.heading("Optimiser settings")
    doc.table(settings_table(settings, overridden))

    doc.heading("Reproduce")
    doc.paragraph("Exact command (every setting explicit):")
    doc.code(command, "bash")


def write_compare_report(result: CompareResult) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (plus PNGs) into ``result.out``."""
    doc = build_compare_document(result, result.out)
    return doc.write(result.out, "report")
