"""Tables of the compare / sweep reports, built from :class:`RunRecord` lists.

Every table is a :class:`Table` (headers + rows of strings) that :mod:`render` writes as
Markdown and HTML. Means and standard deviations use completed runs only; diverged runs are
counted and listed separately (see :func:`diverged_table`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from unimargin.metrics.keys import KEYS, higher_is_better

from .records import RunRecord, completed_runs, heads_in_order
from .stats import PairedTest, Summary, paired_t_test, summarize

__all__ = [
    "Table",
    "METRIC_ORDER",
    "HEADLINE_METRICS",
    "PAIRED_METRICS",
    "PERCENT_KEYS",
    "higher_is_better",
    "direction_arrow",
    "metric_label",
    "format_value",
    "format_summary",
    "format_p",
    "metric_keys",
    "summary_for",
    "paired_for",
    "summary_table",
    "per_metric_table",
    "paired_table",
    "threshold_table",
    "runtime_table",
    "settings_table",
    "diverged_table",
    "sweep_table",
]

# Display order; any other numeric key found in the records follows in sorted order.
METRIC_ORDER = [
    "sw", "cw", "uni", "sep_auc",
    "t_star", "learned_threshold", "uni_at_learned", "uni_loss_learned",
    "threshold_distance", "threshold_distance_rel",
    "intra_class_distance", "intra_class_cosine",
    "inter_class_distance_min", "inter_class_distance_mean",
    "inter_class_angle_min", "inter_class_angle_mean",
    "compactness_ratio", "uniformity", "centroid_margin_min", "centroid_margin_mean",
]
# Columns of the one-glance summary table.
HEADLINE_METRICS = [
    "sw", "cw", "uni", "uni_at_learned", "sep_auc",
    "intra_class_cosine", "inter_class_angle_min", "compactness_ratio", "centroid_margin_min",
]
# Metrics with a paired test against the baseline.
PAIRED_METRICS = [
    "sw", "cw", "uni", "sep_auc", "intra_class_cosine", "inter_class_angle_min",
    "compactness_ratio", "uniformity", "centroid_margin_min",
    "verif_roc_auc", "verif_eer", "reject_auroc", "reject_open_set_accuracy",
]
# Accuracies and rates shown in percent (the records hold fractions in [0, 1]): the unit
# of the one vocabulary, not a second list.
PERCENT_KEYS = frozenset(k for k, v in KEYS.items() if v.unit == "%")


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str | None = None
    notes: list[str] = field(default_factory=list)


def direction_arrow(key: str) -> str:
    direction = higher_is_better(key)
    return "↑" if direction is True else "↓" if direction is False else ""


def metric_label(key: str) -> str:
    """``"sw ↑ (%)"``: name, direction arrow, unit."""
    label = key
    arrow = direction_arrow(key)
    if arrow:
        label += f" {arrow}"
    if key in PERCENT_KEYS:
        label += " (%)"
    return label


def _scale(key: str) -> float:
    return 100.0 if key in PERCENT_KEYS else 1.0


def format_value(key: str, value: float | None, digits: int | None = None) -> str:
    if value is None:
        return "—"
    if digits is None:
        digits = 2 if key in PERCENT_KEYS else 4
    return f"{value * _scale(key):.{digits}f}"


def format_summary(key: str, summary: Summary, digits: int | None = None) -> str:
    if summary.n == 0 or summary.mean is None:
        return "—"
    if digits is None:
        digits = 2 if key in PERCENT_KEYS else 4
    scale = _scale(key)
    if summary.std is None:
        return f"{summary.mean * scale:.{digits}f} (n=1)"
    return f"{summary.mean * scale:.{digits}f} ± {summary.std * scale:.{digits}f}"


def format_p(p: float | None) -> str:
    if p is None:
        return "—"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.4f}"


def metric_keys(records: Iterable[RunRecord]) -> list[str]:
    """Numeric metric keys present in completed records, in display order."""
    present: set[str] = set()
    for record in completed_runs(records):
        for key in list(record.final) + list(record.open_set):
            if record.value(key) is not None:
                present.add(key)
    ordered = [key for key in METRIC_ORDER if key in present]
    return ordered + sorted(present - set(ordered))


def summary_for(records: Iterable[RunRecord], head: str, key: str) -> Summary:
    """Mean ± std of ``key`` over the completed runs of ``head`` that report it."""
    values = [r.value(key) for r in completed_runs(records) if r.head == head]
    return summarize([v for v in values if v is not None])


def paired_for(records: Sequence[RunRecord], head: str, baseline: str, key: str) -> tuple[list[int], PairedTest]:
    """Paired test of ``head`` − ``baseline`` on ``key`` over seeds where both completed."""
    by_seed_head = {r.seed: r.value(key) for r in completed_runs(records) if r.head == head}
    by_seed_base = {r.seed: r.value(key) for r in completed_runs(records) if r.head == baseline}
    seeds = sorted(
        s for s in by_seed_head
        if s in by_seed_base and by_seed_head[s] is not None and by_seed_base[s] is not None
    )
    test = paired_t_test([by_seed_head[s] for s in seeds], [by_seed_base[s] for s in seeds])
    return seeds, test


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


def summary_table(records: Sequence[RunRecord], keys: Sequence[str] | None = None) -> Table:
    """Heads × headline metrics, mean ± std over completed seeds; best mean in bold."""
    heads = heads_in_order(records)
    available = set(metric_keys(records))
    keys = [k for k in (keys or HEADLINE_METRICS) if k in available]
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
        ["head", "runs ok"] + [metric_label(k) for k in keys],
        rows,
        caption="Mean ± sample std over completed seeds; best mean per column in bold.",
    )


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
            str(summary.n),
            ", ".join(per_seed),
        ])
    return Table(["head", "mean ± std", "min", "max", "n", "per seed"], rows)


def paired_table(records: Sequence[RunRecord], key: str, baseline: str = "softmax") -> Table | None:
    """Per-seed differences head − baseline on ``key`` with paired t and sign-flip p-values."""
    heads = [h for h in heads_in_order(records) if h != baseline]
    if baseline not in heads_in_order(records) or not heads:
        return None
    direction = higher_is_better(key)
    rows = []
    for head in heads:
        seeds, test = paired_for(records, head, baseline, key)
        if test.n == 0:
            rows.append([f"`{head}`", "—", "—", "—", "—", "—", "—", "no paired seeds"])
            continue
        diffs = ", ".join(
            f"s{s}: {d * _scale(key):+.{2 if key in PERCENT_KEYS else 4}f}"
            for s, d in zip(seeds, test.differences)
        )
        rows.append([
            f"`{head}`",
            str(test.n),
            diffs,
            f"{test.mean_difference * _scale(key):+.{2 if key in PERCENT_KEYS else 4}f}",
            f"{sum(d > 0 for d in test.differences)}/{test.n}",
            format_p(test.t_p_value),
            format_p(test.sign_flip_p) + ("" if test.sign_flip_exact else " (MC)"),
            _verdict(test, direction),
        ])
    return Table(
        ["head", "paired seeds", f"Δ = head − {baseline} per seed", "mean Δ", "seeds with Δ > 0",
         "paired t p", "sign-flip p", "verdict"],
        rows,
    )


def _verdict(test: PairedTest, direction: bool | None) -> str:
    if test.mean_difference is None or test.t_p_value is None:
        return "too few seeds"
    if test.mean_difference == 0:
        return "identical"
    improved = (test.mean_difference > 0) == bool(direction) if direction is not None else None
    word = "higher" if test.mean_difference > 0 else "lower"
    if improved is not None:
        word = "better" if improved else "worse"
    if test.t_p_value < 0.05:
        return f"{word} (p < 0.05)"
    return f"{word}, not significant"


def threshold_table(records: Sequence[RunRecord]) -> Table:
    """SPEC §3.4 per head: t*, t_l, Uni(t*), Uni(t_l), Uni(t*) − Uni(t_l), |t_l − t*|, relative."""
    keys = ["t_star", "learned_threshold", "uni", "uni_at_learned", "uni_loss_learned",
            "threshold_distance", "threshold_distance_rel"]
    rows = []
    for head in heads_in_order(records):
        rows.append([f"`{head}`"] + [format_summary(k, summary_for(records, head, k)) for k in keys])
    return Table(
        ["head", "t*", "learned t_l", "Uni(t*) (%)", "Uni(t_l) (%)", "Uni(t*) − Uni(t_l) (%) ↓",
         "|t_l − t*| ↓", "|t_l − t*| / (med p − med n) ↓"],
        rows,
        caption="Heads without a learned threshold show — for t_l.",
    )


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
    return Table(["value", "runs ok"] + [metric_label(k) for k in keys] + ["runtime (s)"], rows)
