"""Plots of the compare / sweep reports (matplotlib, Agg canvas, PNG files).

Figures are built with ``matplotlib.figure.Figure`` + the Agg canvas directly, never
pyplot, so nothing here touches global matplotlib state or needs a display. Each function
writes one PNG and returns its path.

- :func:`plot_training_curves` — train loss, test SW and test Uni per epoch, mean over
  completed seeds per head (thin lines: individual seeds; dotted: diverged runs).
- :func:`plot_score_histograms` — per head, the positive metrics p_i and hardest negative
  metrics n_i (SPEC §1) with t* (SPEC §3.2) and the learned threshold (§3.4) marked.
- :func:`plot_pca` — test features projected on their first two principal components
  (centred features, ``torch.linalg.svd``), coloured by class.
- :func:`plot_centroid_margins` — SPEC §3.6 centroid margin per class, one bar per head.
- :func:`plot_sweep` — metrics (mean ± std over seeds) against the swept value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch

from .records import RunOutputs, RunRecord, completed_runs, heads_in_order

__all__ = [
    "pca_2d",
    "positive_negative_metrics",
    "plot_training_curves",
    "plot_score_histograms",
    "plot_pca",
    "plot_centroid_margins",
    "plot_sweep",
]

_DPI = 90
_MAX_SCATTER_POINTS = 2000


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # optional extra
        raise ImportError(
            "unimargin.report plots need matplotlib: pip install 'unimargin[plots]'"
        ) from error
    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=_DPI)
    return path


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """Project (N×d) features on their first two principal components: (N×2).

    X_c = X − mean(X); X_c = U Σ Vᵀ (``torch.linalg.svd``); projection = X_c V[:, :2].
    With d = 1 the second coordinate is 0. Signs are fixed so each component's largest
    loading is positive (the SVD sign is arbitrary).
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"pca_2d: features must be a non-empty (N, d) tensor, got {getattr(features, 'shape', type(features))}")
    centred = features.double() - features.double().mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:2]
    largest = components.gather(1, components.abs().argmax(dim=1, keepdim=True))
    components = components * torch.where(largest < 0, -1.0, 1.0)
    projected = centred @ components.T
    if projected.shape[1] == 1:
        projected = torch.cat([projected, torch.zeros_like(projected)], dim=1)
    return projected.float()


def positive_negative_metrics(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p_i = S[i, y_i], n_i = max_{k≠y_i} S[i, k] (SPEC §1); uses the metrics package."""
    from unimargin.metrics import positive_negative

    return positive_negative(scores, labels)


def _history_series(history: Sequence[dict[str, Any]], section: str, key: str) -> tuple[list[int], list[float]]:
    epochs, values = [], []
    for row in history:
        block = row.get(section) if section else row
        value = block.get(key) if isinstance(block, dict) else None
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            continue
        epochs.append(int(row.get("epoch", len(epochs) + 1)))
        values.append(float(value))
    return epochs, values


def plot_training_curves(records: Sequence[RunRecord], path: str | Path) -> Path:
    panels = [("train", "loss", "train loss"), ("test", "sw", "test SW"), ("test", "uni", "test Uni")]
    heads = heads_in_order(records)
    colors = dict(zip(heads, _colors(len(heads))))
    figure = _figure(4.2 * len(panels), 3.4)
    for index, (section, key, title) in enumerate(panels):
        axis = figure.add_subplot(1, len(panels), index + 1)
        for head in heads:
            per_epoch: dict[int, list[float]] = {}
            for record in (r for r in records if r.head == head):
                epochs, values = _history_series(record.history, section, key)
                if not epochs:
                    continue
                style = dict(color=colors[head], alpha=0.35, linewidth=0.8)
                if not record.ok:
                    style.update(linestyle=":", alpha=0.8)
                axis.plot(epochs, values, **style)
                if record.ok:
                    for epoch, value in zip(epochs, values):
                        per_epoch.setdefault(epoch, []).append(value)
            if per_epoch:
                xs = sorted(per_epoch)
                axis.plot(xs, [sum(per_epoch[x]) / len(per_epoch[x]) for x in xs],
                          color=colors[head], linewidth=2, label=head, marker="o" if len(xs) < 3 else None)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(_integer_locator())
        if key == "loss" and any(
            v > 0 for r in records for v in _history_series(r.history, section, key)[1]
        ):
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        if index == 0:
            axis.legend(fontsize=8)
    return _save(figure, path)


def plot_score_histograms(outputs: Sequence[RunOutputs], path: str | Path) -> Path:
    rows, cols = _grid(len(outputs), 3)
    figure = _figure(4.3 * cols, 3.2 * rows)
    for index, item in enumerate(outputs):
        axis = figure.add_subplot(rows, cols, index + 1)
        p, n = positive_negative_metrics(item.scores, item.labels)
        p, n = p.double(), n.double()
        lo = float(torch.minimum(p.min(), n.min()))
        hi = float(torch.maximum(p.max(), n.max()))
        if hi <= lo:
            hi = lo + 1.0
        bins = torch.linspace(lo, hi, 61).tolist()
        axis.hist(n.tolist(), bins=bins, alpha=0.55, color="tab:red", label="n (hardest negative)")
        axis.hist(p.tolist(), bins=bins, alpha=0.55, color="tab:blue", label="p (positive)")
        if item.t_star is not None:
            axis.axvline(item.t_star, color="black", linestyle="--", linewidth=1.5, label=f"t* = {item.t_star:.3g}")
        if item.learned_threshold is not None:
            axis.axvline(item.learned_threshold, color="tab:green", linewidth=1.5,
                         label=f"learned = {item.learned_threshold:.3g}")
        axis.set_title(f"{item.head} (seed {item.seed})")
        axis.set_xlabel("score")
        axis.legend(fontsize=7)
    return _save(figure, path)


def plot_pca(outputs: Sequence[RunOutputs], path: str | Path, class_names: Sequence[str] | None = None) -> Path:
    rows, cols = _grid(len(outputs), 3)
    figure = _figure(4.0 * cols, 3.6 * rows)
    for index, item in enumerate(outputs):
        axis = figure.add_subplot(rows, cols, index + 1)
        features, labels = item.features, item.labels
        if features.shape[0] > _MAX_SCATTER_POINTS:
            # Fixed subsample so the plot is the same on every rerun.
            keep = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(0))[:_MAX_SCATTER_POINTS]
            features, labels = features[keep], labels[keep]
        projected = pca_2d(features)
        num_classes = int(item.scores.shape[1])
        colors = _colors(num_classes)
        for c in range(num_classes):
            mask = labels == c
            if bool(mask.any()):
                name = class_names[c] if class_names and c < len(class_names) else str(c)
                axis.scatter(projected[mask, 0].tolist(), projected[mask, 1].tolist(), s=4,
                             color=colors[c], linewidths=0, label=name)
        axis.set_title(f"{item.head} (seed {item.seed})")
        axis.set_xlabel("PC 1")
        axis.set_ylabel("PC 2")
        if index == 0:
            axis.legend(fontsize=6, markerscale=2, ncol=2)
    return _save(figure, path)


def plot_centroid_margins(outputs: Sequence[RunOutputs], path: str | Path,
                          class_names: Sequence[str] | None = None) -> Path | None:
    items = [o for o in outputs if o.centroid_margins is not None]
    if not items:
        return None
    num_classes = int(items[0].centroid_margins.numel())
    width = 0.8 / len(items)
    colors = _colors(len(items))
    figure = _figure(max(6.0, 0.6 * num_classes * max(1, len(items)) / 2 + 3), 3.6)
    axis = figure.add_subplot(1, 1, 1)
    for index, item in enumerate(items):
        margins = item.centroid_margins.double().tolist()
        xs = [c + (index - (len(items) - 1) / 2) * width for c in range(len(margins))]
        axis.bar(xs, margins, width=width, color=colors[index], label=item.head)
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_xticks(list(range(num_classes)))
    axis.set_xticklabels(
        [class_names[c] if class_names and c < len(class_names) else str(c) for c in range(num_classes)],
        rotation=45 if num_classes > 6 else 0, fontsize=7,
    )
    axis.set_ylabel("signed distance to nearest boundary")
    axis.set_title("Centroid margin per class (linear heads, SPEC §3.6)")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_sweep(records: Sequence[RunRecord], values: Sequence[Any], keys: Sequence[str],
               path: str | Path, param: str) -> Path:
    from .stats import summarize
    from .tables import PERCENT_KEYS, metric_label

    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    positions = list(values) if numeric else list(range(len(values)))
    rows, cols = _grid(len(keys), 3)
    figure = _figure(4.0 * cols, 3.2 * rows)
    for index, key in enumerate(keys):
        axis = figure.add_subplot(rows, cols, index + 1)
        xs, means, stds = [], [], []
        scale = 100.0 if key in PERCENT_KEYS else 1.0
        for position, value in zip(positions, values):
            found = [r.value(key) for r in completed_runs(records) if r.param_value == value]
            summary = summarize([v for v in found if v is not None])
            if summary.mean is None:
                continue
            xs.append(position)
            means.append(summary.mean * scale)
            stds.append((summary.std or 0.0) * scale)
        axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3)
        axis.set_title(metric_label(key))
        axis.set_xlabel(param)
        if not numeric:
            axis.set_xticks(positions)
            axis.set_xticklabels([str(v) for v in values])
        elif len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 100:
            axis.set_xscale("log")
        axis.grid(alpha=0.3)
    return _save(figure, path)
