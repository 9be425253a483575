"""Tables of the compare / sweep reports, built from :class:`RunRecord` lists.

Every table is a :class:`Table` (headers + rows of strings) that :mod:`render` writes as
Markdown and HTML. Means and standard deviations use completed runs only; diverged runs are
counted and listed separately (see :func:`diverged_table`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from unimargin.metrics.keys import KEYS

from .labels import (PERCENT_KEYS, digits_for, format_delta, format_p, format_summary, format_value,
                     higher_is_better, metric_link, scale_for)
from .records import RunRecord, Tuning, completed_runs, heads_in_order
from .stats import summarize
from .verdict import compare_heads, summary_for

__all__ = [
    "Table",
    "METRIC_ORDER",
    "DECISION_METRICS",
    "GEOMETRY_METRICS",
    "PAIRED_METRICS",
    "metric_keys",
    "summary_table",
    "geometry_table",
    "per_metric_table",
    "paired_table",
    "threshold_table",
    "open_set_tables",
    "per_class_table",
    "confused_pairs_table",
    "summed_confusion",
    "tuning_tables",
    "runtime_table",
    "settings_table",
    "diverged_table",
    "sweep_table",
]

# Display order; any other numeric key found in the records follows in sorted order.
METRIC_ORDER = [
    "sw", "cw", "uni", "uni_deployed", "sep_auc",
    "t_star", "val_t_star", "learned_threshold", "uni_at_learned", "uni_loss_learned",
    "threshold_distance", "threshold_distance_rel",
    "intra_class_distance", "intra_class_cosine",
    "inter_class_distance_min", "inter_class_distance_mean",
    "inter_class_angle_min", "inter_class_angle_mean",
    "compactness_ratio", "uniformity", "centroid_margin_min", "centroid_margin_mean",
]
# The summary table: the figures a decision is made on (SPEC §3.1–§3.3, §3.9).
DECISION_METRICS = ["sw", "cw", "uni", "uni_deployed"]
# Separability and feature geometry (SPEC §3.5–§3.6): their own table.
GEOMETRY_METRICS = [
    "sep_auc", "intra_class_cosine", "inter_class_angle_min", "inter_class_angle_mean",
    "compactness_ratio", "uniformity", "centroid_margin_min",
]
# Metrics with a paired test against the baseline: scale-free ones only (centroid margins and
# distances are in each head's own feature units, so head − baseline would mix scales).
PAIRED_METRICS = [
    "sw", "cw", "uni", "uni_deployed", "sep_auc", "intra_class_cosine", "inter_class_angle_min",
    "compactness_ratio", "uniformity",
    "verif_roc_auc", "verif_eer", "reject_auroc", "reject_open_set_accuracy",
]
# Rejection scores of issue 14 (SPEC §2.9): the unsuffixed reject_* keys are max_score.
REJECTION_SCORES = ("max_score", "centroid_cosine", "energy")


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str | None = None
    notes: list[str] = field(default_factory=list)


def _is_count(key: str) -> bool:
    meta = KEYS.get(key)
    return meta is not None and meta.unit == "count"


def metric_keys(records: Iterable[RunRecord]) -> list[str]:
    """Numeric metric keys present in completed records, in display order; counts (``n``,
    pair and sample counts) are not metrics and are left out."""
    present: set[str] = set()
    for record in completed_runs(records):
        for key in list(record.final) + list(record.open_set):
            if not _is_count(key) and record.value(key) is not None:
                present.add(key)
    ordered = [key for key in METRIC_ORDER if key in present]
    return ordered + sorted(present - set(ordered))


def _best_heads(records: Sequence[RunRecord], heads: Sequence[str], key: str) -> set[str]:
    direction = higher_is_better(key)
    if direction is None:
        return set()
    means = {h: summary_for(records, h, key).mean for h in heads}
    means = {h: m for h, m in means.items() if m is not None}
    if len(means) < 2:
        return set()
    best = max(means.values()) if direction else min(means.values())
    return {h for h, m in means.items() if m == best}


def summary_table(records: Sequence[RunRecord], keys: Sequence[str] | None = None,
                  caption: str | None = None) -> Table:
    """Heads × metrics (default: the decision metrics), mean ± std over completed seeds on
    the test split; best mean in bold."""
    heads = heads_in_order(records)
    available = set(metric_keys(records))
    keys = [k for k in (keys or DECISION_METRICS) if k in available]
    rows = []
    best = {k: _best_heads(records, heads, k) for k in keys}
    for head in heads:
        n_ok = sum(1 for r in records if r.head == head and r.ok)
        n_all = sum(1 for r in records if r.head == head)
        row = [f"`{head}`", f"{n_ok}/{n_all}"]
        for key in keys:
            text = format_summary(key, summary_for(records, head, key))
            row.append(f"**{text}**" if head in best[key] else text)
        rows.append(row)
    return Table(
        ["head", "runs ok"] + [metric_link(k) for k in keys],
        rows,
        caption=caption or "Test split, mean ± sample std over completed seeds; best mean per column in bold.",
    )


def geometry_table(records: Sequence[RunRecord]) -> Table:
    """Separability and feature geometry (SPEC §3.5–§3.6), fixed decimals, angles in degrees."""
    return summary_table(records, GEOMETRY_METRICS, caption=(
        "Test split, mean ± std over seeds. Angles in degrees. Centroid margins are in each head's "
        "own feature units: compare them within a head, not across heads with different feature scales."))


def per_metric_table(records: Sequence[RunRecord], key: str) -> Table:
    """One metric: per head mean ± std, min, max and every seed's value."""
    heads = heads_in_order(records)
    best = _best_heads(records, heads, key)
    rows = []
    for head in heads:
        summary = summary_for(records, head, key)
        per_seed = []
        for record in sorted((r for r in records if r.head == head), key=lambda r: r.seed):
            if not record.ok:
                per_seed.append(f"s{record.seed}: {record.status}")
            else:
                per_seed.append(f"s{record.seed}: {format_value(key, record.value(key))}")
        text = format_summary(key, summary)
        rows.append([
            f"`{head}`",
            f"**{text}**" if head in best else text,
            format_value(key, min(summary.values)) if summary.values else "—",
            format_value(key, max(summary.values)) if summary.values else "—",
            ", ".join(per_seed),
        ])
    return Table(["head", "mean ± std", "min", "max", "per seed"], rows)


def paired_table(records: Sequence[RunRecord], key: str, baseline: str = "softmax") -> Table | None:
    """Per-seed differences head − baseline on ``key``: mean Δ, its 95 % t-interval, paired t
    p, Holm-adjusted p (over the heads), sign-flip p and the SPEC §3.9 call."""
    heads = [h for h in heads_in_order(records) if h != baseline]
    if baseline not in heads_in_order(records) or not heads:
        return None
    digits = digits_for(key)
    scale = scale_for(key)
    rows = []
    for comparison in compare_heads(records, key, baseline, heads):
        test = comparison.test
        if test.n == 0:
            rows.append([f"`{comparison.head}`", "0", "—", "—", "—", "—", "—", "—", "—", comparison.call])
            continue
        diffs = ", ".join(f"s{s}: {d * scale:+.{digits}f}" for s, d in zip(comparison.seeds, test.differences))
        if test.zero_variance:
            interval, t_p = "all Δ equal", "— (zero variance)"
        else:
            interval = ("—" if test.ci_low is None
                        else f"{test.ci_low * scale:+.{digits}f} to {test.ci_high * scale:+.{digits}f}")
            t_p = format_p(test.t_p_value)
        rows.append([
            f"`{comparison.head}`",
            str(test.n),
            diffs,
            f"{test.mean_difference * scale:+.{digits}f}",
            interval,
            f"{sum(d > 0 for d in test.differences)}/{test.n}",
            t_p,
            format_p(comparison.p_holm),
            format_p(test.sign_flip_p) + ("" if test.sign_flip_exact else " (MC)"),
            f"**{comparison.call}**" if comparison.decided else comparison.call,
        ])
    return Table(
        ["head", "paired seeds", f"Δ = head − {baseline} per seed", "mean Δ", "[95% CI](#glossary-ci)",
         "seeds with Δ > 0", "paired t p", "[Holm p](#glossary-holm)", "[sign-flip p](#glossary-sign-flip)",
         "[call](#glossary-rule)"],
        rows,
    )


def _gap_summary(records: Sequence[RunRecord], head: str, key: str) -> str:
    """Uni(t*) − Uni at another threshold, per seed, as mean ± std in points."""
    gaps = [r.value("uni") - r.value(key) for r in completed_runs(records)
            if r.head == head and r.value("uni") is not None and r.value(key) is not None]
    return format_summary("uni", summarize(gaps))


def threshold_table(records: Sequence[RunRecord]) -> Table:
    """Deploying one threshold (SPEC §3.4, §3.8–§3.9), per head on the test split: t* and Uni
    at it (test-optimal, not deployable), the threshold chosen on validation and the
    deployed Uni at it, the learned threshold and Uni at it (bce-u/bce-d), and the gaps."""
    rows = []
    for head in heads_in_order(records):
        cells = [format_summary(k, summary_for(records, head, k)) for k in
                 ("t_star", "uni", "val_t_star", "uni_deployed")]
        cells.append(_gap_summary(records, head, "uni_deployed") if cells[3] != "—" else "—")
        cells += [format_summary(k, summary_for(records, head, k)) for k in ("learned_threshold", "uni_at_learned")]
        cells.append(_gap_summary(records, head, "uni_at_learned") if cells[-1] != "—" else "—")
        rows.append([f"`{head}`"] + cells)
    return Table(
        ["head", f"test-optimal {metric_link('t_star')}", f"{metric_link('uni')} at t*",
         metric_link("val_t_star"), metric_link("uni_deployed"), "gap: Uni(t*) − deployed (points) ↓",
         metric_link("learned_threshold"), metric_link("uni_at_learned"),
         "gap: Uni(t*) − Uni(learned) (points) ↓"],
        rows,
        caption="Test split, mean ± std over seeds; thresholds in score units. t* is fitted on the test set "
                "itself (a property of the features, not deployable); the deployed and learned thresholds are "
                "chosen without test data. — = not recorded (heads without a learned threshold; runs older "
                "than the validation protocol).",
    )


def _score_key(base: str, score: str) -> str:
    return base if score == "max_score" else f"{base}_{score}"


def open_set_tables(records: Sequence[RunRecord]) -> list[Table]:
    """Verification keys, then rejection per score (max_score = the unsuffixed reject_* keys;
    centroid_cosine / energy when the records have them, issue 14)."""
    present = set(metric_keys(records))
    verif = [k for k in present if k.startswith("verif_") and higher_is_better(k) is not None]
    verif = [k for k in KEYS if k in verif] + sorted(set(verif) - set(KEYS))
    tables = []
    if verif:
        tables.append(summary_table(records, verif, caption=(
            "Verification on the held-out classes' test samples (cosine similarity of pairs, SPEC §3.7).")))
    heads = heads_in_order(records)
    bases = [b for b in ("reject_auroc", "reject_open_set_accuracy", "reject_known_accept_rate",
                         "reject_unknown_reject_rate")
             if any(_score_key(b, score) in present for score in REJECTION_SCORES)]
    rows = []
    for score in REJECTION_SCORES:
        keys = [_score_key(b, score) for b in bases]
        if not any(k in present for k in keys):
            continue
        for head in heads:
            rows.append([f"`{head}`", f"`{score}`"] + [format_summary(k, summary_for(records, head, k)) for k in keys])
    if rows:
        tables.append(Table(
            ["head", "rejection score"] + [metric_link(b) for b in bases],
            rows,
            caption="Known-class test samples vs held-out-class samples, mean ± std over seeds; rates at the "
                    "rejection threshold chosen without test data (SPEC §2.9). max_score = the head's score.",
        ))
    return tables


def summed_confusion(records: Sequence[RunRecord], head: str):
    """(K × (K+1) int64 tensor summed over the completed seeds of ``head`` with a
    ``per_class`` entry, number of seeds, class names) or None."""
    import torch

    matrices, names = [], []
    for record in completed_runs(records):
        confusion = record.per_class.get("confusion") if record.head == head else None
        if confusion:
            matrices.append(torch.as_tensor(confusion, dtype=torch.int64))
            names = names or [str(c) for c in record.per_class.get("classes") or []]
    if not matrices:
        return None
    shapes = {tuple(m.shape) for m in matrices}
    if len(shapes) != 1:
        raise ValueError(f"per_class confusion matrices of head {head!r} differ in shape between seeds: {sorted(shapes)}")
    total = torch.stack(matrices).sum(0)
    names = names or [str(c) for c in range(total.shape[0])]
    return total, len(matrices), names


def per_class_table(records: Sequence[RunRecord]) -> Table | None:
    """Accuracy per class (rows) and head (columns), from the test confusion matrices summed
    over seeds (pooled counts, so every seed's samples weigh the same)."""
    from unimargin.metrics.confusion import per_class_accuracy

    summed = {h: summed_confusion(records, h) for h in heads_in_order(records)}
    summed = {h: v for h, v in summed.items() if v is not None}
    if not summed:
        return None
    names = next(iter(summed.values()))[2]
    accuracy = {h: per_class_accuracy(v[0]) for h, v in summed.items()}
    rows = []
    for c, name in enumerate(names):
        row = [f"`{name}`"]
        for head in summed:
            value = accuracy[head][c] if c < len(accuracy[head]) else None
            row.append(format_value("sw", value))
        rows.append(row)
    seeds = sorted({v[1] for v in summed.values()})
    return Table(["class"] + [f"`{h}` (%)" for h in summed], rows,
                 caption=f"Per-class accuracy on the test split (top-1; ties count wrong), confusion counts summed "
                         f"over {'/'.join(map(str, seeds))} seeds per head.")


def confused_pairs_table(records: Sequence[RunRecord], k: int = 5) -> Table | None:
    """The ``k`` most frequent (true → predicted) confusions per head, summed over seeds."""
    from unimargin.metrics.confusion import worst_confused_pairs

    rows = []
    for head in heads_in_order(records):
        found = summed_confusion(records, head)
        if found is None:
            continue
        total, n_seeds, names = found
        pairs = worst_confused_pairs(total, k)
        support = total.sum(1)
        text = ", ".join(f"`{names[t]}` → `{names[p]}`: {n} ({100.0 * n / max(1, int(support[t])):.1f} % of "
                         f"`{names[t]}`)" for t, p, n in pairs) or "none"
        rows.append([f"`{head}`", str(n_seeds), text])
    if not rows:
        return None
    return Table(["head", "seeds summed", f"worst confused pairs (true → predicted: count), top {k}"], rows)


def tuning_tables(tuning: Tuning) -> list[Table]:
    """The search space and choice per head, then every trial of every head."""
    direction = tuning.metric
    space_rows = []
    for study in tuning.studies:
        space = ", ".join(
            f"`{name}` in [{spec.get('low')}, {spec.get('high')}]" + (" (log)" if spec.get("log") else "")
            if "low" in spec else f"`{name}` = {spec.get('value')}"
            for name, spec in study.space.items()) or "—"
        chosen = ", ".join(f"`{k}` = {_short(v)}" for k, v in study.best.items()) or "—"
        best = "—" if study.best_value is None else f"{study.best_value * (100.0 if _is_percent(direction) else 1.0):.2f}"
        space_rows.append([f"`{study.head}`", space, str(len(study.trials)), chosen, best])
    tables = [Table(["head", "search space", "trials", "chosen", f"best {direction}"], space_rows,
                    caption=f"Each head tuned on seed 0's validation split, maximising {direction}; every seed then "
                            "trains at the chosen values.")]
    trial_rows = []
    for study in tuning.studies:
        for trial in study.trials:
            value = trial.get("value")
            params = ", ".join(f"`{k}` = {_short(v)}" for k, v in (trial.get("params") or {}).items())
            mark = " **(chosen)**" if (trial.get("params") or {}) == study.best and study.best else ""
            trial_rows.append([
                f"`{study.head}`", str(trial.get("number", "?")), params or "—",
                "—" if value is None else f"{float(value) * (100.0 if _is_percent(direction) else 1.0):.2f}",
                str(trial.get("state", "")) + mark])
    if trial_rows:
        tables.append(Table(["head", "trial", "params", direction, "state"], trial_rows))
    return tables


def _is_percent(metric: str) -> bool:
    return metric.split(".")[-1] in PERCENT_KEYS


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def runtime_table(records: Sequence[RunRecord]) -> Table:
    rows = []
    for head in heads_in_order(records):
        runs = [r for r in records if r.head == head]
        ok = completed_runs(runs)
        runtime = summarize([r.runtime_s for r in ok])
        statuses: dict[str, int] = {}
        for r in runs:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        rows.append([
            f"`{head}`",
            format_summary("runtime_s", runtime, digits=1),
            f"{sum(r.runtime_s for r in runs):.1f}",
            ", ".join(str(r.epochs_completed) for r in sorted(runs, key=lambda r: r.seed)),
            ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
        ])
    return Table(["head", "runtime per run (s)", "total (s)", "epochs completed per seed", "status"], rows)


_SETTING_KEYS = ["optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "warmup_epochs"]


def settings_table(settings: dict[str, dict[str, Any]], overridden: Sequence[str] = ()) -> Table:
    """Optimiser settings per head; ``settings[head]`` holds the resolved values (and
    ``head_params``). Overridden keys are marked with *."""
    rows = []
    for head, values in settings.items():
        row = [f"`{head}`"]
        for key in _SETTING_KEYS:
            text = "—" if values.get(key) is None else str(values.get(key))
            row.append(text + (" *" if key in overridden else ""))
        params = values.get("head_params") or {}
        row.append(", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "defaults")
        if values.get("varies_across_seeds"):
            row[0] += " (**differs between seeds**; first run shown, see records.json)"
        rows.append(row)
    return Table(
        ["head"] + _SETTING_KEYS + ["head params"],
        rows,
        caption="What the runs used (their saved configs): each head at its recommended settings; "
                "* = overridden on the command line.",
    )


def diverged_table(records: Sequence[RunRecord]) -> Table | None:
    bad = [r for r in records if not r.ok]
    if not bad:
        return None
    rows = [[f"`{r.head}`", str(r.seed), r.status, str(r.epochs_completed), r.message or "—"] for r in bad]
    return Table(["head", "seed", "status", "epochs completed", "message"], rows,
                 caption="Excluded from every mean, std and paired test.")


def sweep_table(records: Sequence[RunRecord], values: Sequence[Any], keys: Sequence[str]) -> Table:
    """Rows = swept values, columns = metrics (mean ± std over completed seeds)."""
    available = set(metric_keys(records))
    keys = [k for k in keys if k in available]
    rows = []
    for value in values:
        runs = [r for r in records if r.param_value == value]
        n_ok = len(completed_runs(runs))
        row = [f"`{value}`", f"{n_ok}/{len(runs)}"]
        for key in keys:
            row.append(format_summary(key, summarize(
                [v for v in (r.value(key) for r in completed_runs(runs)) if v is not None])))
        row.append(format_summary("runtime_s", summarize([r.runtime_s for r in completed_runs(runs)]), digits=1))
        rows.append(row)
    return Table(["value", "runs ok"] + [metric_link(k) for k in keys] + ["runtime (s)"], rows)
