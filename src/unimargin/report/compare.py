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

from .glossary import CORE_KEYS, glossary_entries
from .labels import metric_label
from .records import RunOutputs, RunRecord, completed_runs, history_split, read_tuning
from .render import Document
from .tables import (
    PAIRED_METRICS,
    confused_pairs_table,
    diverged_table,
    geometry_table,
    metric_keys,
    open_set_tables,
    paired_table,
    per_class_table,
    per_metric_table,
    runtime_table,
    settings_table,
    summary_table,
    summed_confusion,
    threshold_table,
    tuning_tables,
)
from .verdict import resolution_sentence, n_test_of, verdict_lines

__all__ = [
    "CompareResult",
    "build_compare_document",
    "write_compare_report",
    "settings_from_records",
    "add_run_footer",
]


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


def _splits_text(result: CompareResult) -> str:
    """"3601 train / 399 validation / 1000 test samples" from the records (issue-13 runs),
    else the experiment's setup (older runs: no validation split)."""
    splits = next((r.splits for r in completed_runs(result.records) if r.splits), None)
    setup = result.setup
    if splits:
        text = f"{splits.get('n_train', '?')} train / {splits.get('n_val', '?')} validation / {splits.get('n_test', '?')} test samples"
        n_unknown = splits.get("n_unknown")
    else:
        text = f"{setup.get('n_train', '?')} train / {setup.get('n_test', '?')} test samples"
        n_unknown = setup.get("n_unknown")
    if n_unknown:
        text += f", {n_unknown} samples of held-out classes {', '.join(result.unknown_class_names or [])}"
    return text


def condition_sentence(records) -> str | None:
    """The training-data condition of the runs (``--imbalance`` / ``--label-noise``, issue
    15), or None for the plain data. Only the training split is changed; validation and test
    stay clean and balanced, so every test figure is on the usual data."""
    configs = [r.config for r in completed_runs(records) if r.config] or [r.config for r in records if r.config]
    parts = []
    for key, text in (("imbalance", "is long-tailed (`--imbalance {v:g}`: class c keeps n·{v:g}^(c/(K−1)) training "
                                    "samples, n = the largest class's count, so the last class keeps {v:g}·n)"),
                      ("label_noise", "has noisy labels (`--label-noise {v:g}`: each training label replaced by a "
                                      "uniformly drawn other class with probability {v:g})")):
        values = sorted({float(c[key]) for c in configs if c.get(key) not in (None, 0, 0.0)})
        if len(values) == 1:
            parts.append(text.format(v=values[0]))
        elif values:
            parts.append(f"has a `{key}` that differs between runs ({', '.join(f'{v:g}' for v in values)})")
    if not parts:
        return None
    return ("**Training-data condition.** The training split " + " and ".join(parts)
            + "; the validation and test splits stay clean and balanced.")


def _protocol_sentence(records) -> str:
    """Which split each number of the report comes from (SPEC §3.9)."""
    ok = completed_runs(records)
    splits = {history_split(r.history) for r in ok} - {None}
    selections = sorted({r.select_epoch for r in ok if r.select_epoch})
    if splits == {"test"}:
        return ("**Splits.** These runs predate the validation protocol (issue 13): their per-epoch "
                "curves were measured on the test split and no threshold was chosen on validation data. "
                "Every table is on the test split at the last epoch.")
    epoch = (f"the epoch kept by `--select-epoch {'/'.join(selections)}`" if selections else "the kept epoch")
    return (f"**Splits.** Every figure of the verdict and the tables is on the test split, evaluated once at "
            f"{epoch}. The training curves, the epoch choice, the deployed threshold (t* of the validation "
            "split) and any tuning use the validation split only; t* and Uni of the test split are "
            "test-optimal (a property of the features, not something a deployment can reach).")


def build_compare_document(result: CompareResult, plot_dir: str | Path | None = None) -> Document:
    """The report as a :class:`Document` (plots are written into ``plot_dir``)."""
    from . import plots

    plot_dir = Path(plot_dir if plot_dir is not None else result.out)
    records = result.records
    ok = completed_runs(records)
    doc = Document(f"unimargin compare: {', '.join(result.heads)} on {result.dataset}")
    setup = result.setup
    n_seeds = len(result.seeds)
    # batch None = chosen by the engine for the data size: the runs' resolved configs say what
    batches = sorted({str(r.config.get("batch_size")) for r in ok if r.config.get("batch_size")})
    batch = setup.get("batch_size") or ("/".join(batches) if batches else "auto")
    doc.paragraph(
        f"Dataset `{result.dataset}` ({setup.get('num_classes', len(result.class_names))} known classes, "
        f"{_splits_text(result)}). Backbone `{setup.get('model', '?')}` with {setup.get('feat_dim', '?')}-d "
        f"features, {result.epochs} epochs, batch {batch}, seeds "
        f"{', '.join(map(str, result.seeds))}; baseline `{result.baseline}`. {len(ok)} of {len(records)} runs "
        f"completed. {_time_sentence(result.records, result.wall_time_s)}")

    doc.heading("Verdict")
    groups = verdict_lines(records, result.heads, result.baseline)
    for title, sentences in groups:
        doc.heading(title, level=3)
        doc.bullets(sentences)
    if not groups:
        doc.paragraph("No comparison available (no completed run).")
    n_test = n_test_of(records, setup.get("n_test"))
    doc.paragraph(
        f"{resolution_sentence(n_test)} Rule ([SPEC §3.9](#glossary-rule)): better or worse only with at least "
        f"3 paired seeds, a [Holm-adjusted](#glossary-holm) paired-t p < 0.05 and differences that are not "
        f"identical on every seed; otherwise no detectable difference, with the [95% interval](#glossary-ci) "
        f"of Δ showing how large a difference the {n_seeds} seed{'s' if n_seeds != 1 else ''} still allow "
        "(the interval is per comparison, not Holm-adjusted, so it can exclude 0 while the Holm p is "
        "above 0.05)"
        + (f" (with {n_seeds} seeds the smallest possible [sign-flip p](#glossary-sign-flip) is "
           f"{2 / 2 ** n_seeds:.4g})." if n_seeds >= 1 else "."))
    doc.paragraph(_protocol_sentence(records))
    condition = condition_sentence(records)
    if condition:
        doc.paragraph(condition)

    doc.heading("Glossary")
    doc.glossary([e for e in glossary_entries() if e.anchor not in _other_anchors(records)])

    doc.heading("Summary")
    doc.table(summary_table(records))
    doc.heading("Separability and feature geometry")
    doc.table(geometry_table(records))

    doc.heading(f"Paired comparison with {result.baseline}")
    doc.paragraph(
        f"Δ = head − {result.baseline} on the same seed, in the metric's unit (points for accuracies). "
        "The call follows SPEC §3.9 (see the glossary); Holm adjusts the paired-t p over the heads "
        "compared with the baseline on that metric.")
    available = set(metric_keys(records))
    for key in PAIRED_METRICS:
        if key in available:
            doc.heading(metric_label(key), level=3)
            doc.table(paired_table(records, key, result.baseline))

    doc.heading("Learned threshold vs t*: deploying one threshold")
    doc.paragraph(
        "SPEC §3.4, §3.8–§3.9. Uni at the test-optimal t* is the property metric of the papers; a deployment "
        "cannot fit t* on its test data, so it uses the threshold chosen on the validation split (deployed Uni) "
        "or, for bce-u/bce-d, the learned threshold as is. The gap to Uni(t*) is the price of deployment.")
    doc.table(threshold_table(records))

    class_table = per_class_table(records)
    if class_table is not None:
        doc.heading("Per-class accuracy")
        doc.table(class_table)
        doc.table(confused_pairs_table(records))
        confusions = [(h, *found) for h in result.heads
                      if (found := summed_confusion(records, h)) is not None]
        doc.image(plots.plot_confusion(confusions, plot_dir / "confusion.png"),
                  "Test confusion matrices summed over seeds, each row in % of its true class "
                  "(last column: rejected samples).")

    if result.unknown_class_names:
        doc.heading("Open set: held-out classes")
        threshold_sources = sorted({str(r.open_set.get("reject_threshold_source")) for r in ok if r.open_set})
        doc.paragraph(
            f"Training never saw classes {', '.join(result.unknown_class_names)}. Verification (SPEC §3.7): "
            "cosine similarity of pairs of unknown-class test features, genuine = same class. "
            "Rejection (SPEC §2.9): AUROC of each rejection score between known-class test samples and "
            "unknown samples, and open-set prediction at the head's threshold (learned threshold where the "
            f"head has one, else t* of the validation split; used here: {', '.join(threshold_sources) or '—'}).")
        for table in open_set_tables(records):
            doc.table(table)

    tuning = read_tuning(result.out)
    if tuning is not None:
        doc.heading("Tuning")
        doc.paragraph(
            f"Each head's hyper-parameters were chosen by an Optuna study on seed 0's validation split "
            f"(metric `{tuning.metric}`"
            + (f", {tuning.trials_per_head} trials per head" if tuning.trials_per_head else "")
            + "); the test split played no part. Search space, choice and every trial:")
        for table in tuning_tables(tuning):
            doc.table(table)

    doc.heading("Plots")
    split = plots.curve_split(records)
    curves = plots.plot_training_curves(records, plot_dir / "training_curves.png")
    doc.image(curves, f"Training curves ({'validation' if split != 'test' else 'test split: old runs'} SW and "
                      "Uni in %): mean over completed seeds (thick), single seeds (thin), diverged (dotted).")
    if result.outputs:
        outputs = [_with_deployed_threshold(o, records) for o in result.outputs]
        doc.image(plots.plot_score_histograms(outputs, plot_dir / "score_histograms.png"),
                  "Positive metrics p and hardest negative metrics n on the test set (first completed seed per "
                  "head), with the test-optimal t* (dashed), t* of the validation split (dash-dot) and the "
                  "learned threshold (green).")
        doc.image(plots.plot_pca(outputs, plot_dir / "features_pca.png", result.class_names),
                  "Test features projected on their first two principal components, coloured by class.")
        doc.image(plots.plot_centroid_margins(outputs, plot_dir / "centroid_margins.png", result.class_names),
                  "Centroid margin per class (SPEC §3.6; heads with a linear decision only), one panel per head: "
                  "margins are in each head's own feature units, so compare the pattern across classes, not "
                  "bar heights across heads. Red = the class mean itself is misclassified.")

    doc.heading("Per-metric tables")
    doc.paragraph("Test split, every seed.")
    for key in metric_keys(records):
        doc.heading(metric_label(key), level=3)
        doc.table(per_metric_table(records, key))

    doc.heading("Runtime")
    doc.table(runtime_table(records))

    add_run_footer(doc, records, result.settings, result.overridden, result.command)
    others = [e for e in glossary_entries(metric_keys(records)) if e.anchor in _other_anchors(records)]
    if others:
        doc.heading("More metrics: glossary")
        doc.glossary(others)
    return doc


def _other_anchors(records) -> set[str]:
    """Glossary anchors of the non-core metric keys the report shows (the second glossary)."""
    from .labels import glossary_anchor

    return {glossary_anchor(k) for k in metric_keys(records) if k not in CORE_KEYS}


def _with_deployed_threshold(item: RunOutputs, records) -> RunOutputs:
    """The plotted run's t* of the validation split, from its record (engine ``val_t_star``)."""
    from dataclasses import replace

    record = next((r for r in records if r.head == item.head and r.seed == item.seed and r.ok), None)
    value = None if record is None else record.value("val_t_star")
    return replace(item, deployed_threshold=value) if value is not None else item


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
