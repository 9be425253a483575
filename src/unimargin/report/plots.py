"""Plots of the compare / sweep reports (matplotlib, Agg canvas, PNG files).

Figures are built with ``matplotlib.figure.Figure`` + the Agg canvas directly, never
pyplot, so nothing here touches global matplotlib state or needs a display. Each function
writes one PNG and returns its path.

- :func:`plot_training_curves` — train loss, validation SW and validation Uni per epoch (old
  runs without a validation split: test, and the panel title says so), mean over completed
  seeds per head (thin lines: individual seeds; dotted: diverged runs).
- :func:`plot_score_histograms` — per head, the positive metrics p_i and hardest negative
  metrics n_i (SPEC §1) with t* (SPEC §3.2) and the learned threshold (§3.4) marked.
- :func:`plot_pca` — test features projected on their first two principal components
  (centred features, ``torch.linalg.svd``), coloured by class.
- :func:`plot_centroid_margins` — SPEC §3.6 centroid margin per class, one panel per head
  (each on its own axis: heads have different feature scales).
- :func:`plot_confusion` — per head, the test confusion matrix summed over seeds, each row
  in % of the true class, with class names and a "rejected" column.
- :func:`plot_sweep` — metrics (mean ± std over seeds) against the swept value.

Accuracies are plotted in percent (as in the tables); every panel has axis labels and a
legend.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch

from .records import RunOutputs, RunRecord, completed_runs, heads_in_order, history_split

__all__ = [
    "preload",
    "pca_2d",
    "positive_negative_metrics",
    "plot_training_curves",
    "plot_score_histograms",
    "plot_pca",
    "plot_centroid_margins",
    "plot_confusion",
    "plot_sweep",
]

_DPI = 90
_MAX_SCATTER_POINTS = 2000


def preload() -> None:
    """Import what :func:`_figure` imports (matplotlib Figure + Agg canvas, ~0.5–1 s) ahead of
    time, when the plots extra is installed; a no-op without it (the plots then raise)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401


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


def curve_split(records: Sequence[RunRecord]) -> str | None:
    """"val" when any run has per-epoch validation metrics, else "test" (old runs), else None."""
    splits = {history_split(r.history) for r in records} - {None}
    return "val" if "val" in splits else "test" if "test" in splits else None


def plot_training_curves(records: Sequence[RunRecord], path: str | Path) -> Path:
    split = curve_split(records) or "val"
    name = "validation" if split == "val" else "test (old runs: no validation split)"
    panels = [("train", "loss", "training loss", "loss (log scale)", 1.0),
              (split, "sw", f"SW on {name}", "SW (%)", 100.0),
              (split, "uni", f"Uni on {name}", "Uni (%)", 100.0)]
    heads = heads_in_order(records)
    colors = dict(zip(heads, _colors(len(heads))))
    figure = _figure(4.4 * len(panels), 3.5)
    for index, (section, key, title, ylabel, scale) in enumerate(panels):
        axis = figure.add_subplot(1, len(panels), index + 1)
        for head in heads:
            per_epoch: dict[int, list[float]] = {}
            for record in (r for r in records if r.head == head):
                epochs, values = _history_series(record.history, section, key)
                if not epochs:
                    continue
                values = [v * scale for v in values]
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
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.xaxis.set_major_locator(_integer_locator())
        if key == "loss" and all(
            v > 0 for r in records for v in _history_series(r.history, section, key)[1]
        ) and any(_history_series(r.history, section, key)[1] for r in records):
            axis.set_yscale("log")
        elif key == "loss":
            axis.set_ylabel("loss")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8, title="mean over seeds", title_fontsize=7)
    return _save(figure, path)


def plot_score_histograms(outputs: Sequence[RunOutputs], path: str | Path) -> Path:
    rows, cols = _grid(len(outputs), 3)
    figure = _figure(4.3 * cols, 3.3 * rows)
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
            axis.axvline(item.t_star, color="black", linestyle="--", linewidth=1.5,
                         label=f"test-optimal t* = {item.t_star:.3g}")
        if item.deployed_threshold is not None:
            axis.axvline(item.deployed_threshold, color="tab:orange", linestyle="-.", linewidth=1.5,
                         label=f"t* of validation = {item.deployed_threshold:.3g}")
        if item.learned_threshold is not None:
            axis.axvline(item.learned_threshold, color="tab:green", linewidth=1.5,
                         label=f"learned = {item.learned_threshold:.3g}")
        axis.set_title(f"{item.head} (seed {item.seed})")
        axis.set_xlabel("score")
        axis.set_ylabel("test samples")
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
        axis.legend(fontsize=6, markerscale=2, ncol=2, title="class", title_fontsize=6)
    return _save(figure, path)


def plot_centroid_margins(outputs: Sequence[RunOutputs], path: str | Path,
                          class_names: Sequence[str] | None = None) -> Path | None:
    """One panel per head with its own y-axis: margins are in the head's feature units, which
    differ between heads (normalised features, learned scales), so bars of different heads
    on one axis would mislead."""
    items = [o for o in outputs if o.centroid_margins is not None]
    if not items:
        return None
    rows, cols = _grid(len(items), 3)
    num_classes = max(int(o.centroid_margins.numel()) for o in items)
    figure = _figure(max(4.2, 0.35 * num_classes + 1.5) * cols, 3.2 * rows)
    colors = _colors(len(items))
    for index, item in enumerate(items):
        axis = figure.add_subplot(rows, cols, index + 1)
        margins = item.centroid_margins.double().tolist()
        bar_colors = [colors[index] if m >= 0 else "tab:red" for m in margins]
        axis.bar(range(len(margins)), margins, color=bar_colors, label=f"{item.head} (seed {item.seed})")
        axis.axhline(0.0, color="black", linewidth=0.8)
        axis.set_xticks(list(range(len(margins))))
        axis.set_xticklabels(
            [class_names[c] if class_names and c < len(class_names) else str(c) for c in range(len(margins))],
            rotation=45 if len(margins) > 6 else 0, fontsize=7)
        axis.set_xlabel("class")
        axis.set_ylabel(f"margin ({item.head} feature units)", fontsize=8)
        axis.set_title(item.head)
        axis.legend(fontsize=7)
        axis.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_confusion(confusions: Sequence[tuple[str, Any, int, Sequence[str]]], path: str | Path) -> Path | None:
    """``confusions``: (head, K×(K+1) count tensor, seeds summed, class names) per head. Each
    row is shown in % of its true class's samples; the last column holds rejections."""
    if not confusions:
        return None
    rows, cols = _grid(len(confusions), 3)
    k = max(int(c[1].shape[0]) for c in confusions)
    side = max(3.6, 0.38 * k + 1.8)
    figure = _figure(side * cols, side * rows)
    for index, (head, matrix, n_seeds, names) in enumerate(confusions):
        axis = figure.add_subplot(rows, cols, index + 1)
        counts = matrix.double()
        percent = 100.0 * counts / counts.sum(1, keepdim=True).clamp_min(1.0)
        image = axis.imshow(percent.tolist(), cmap="Blues", vmin=0.0, vmax=100.0, aspect="auto")
        labels = [str(n) for n in names][:counts.shape[0]]
        axis.set_xticks(list(range(counts.shape[1])))
        axis.set_xticklabels(labels + ["rejected"], rotation=60, fontsize=6, ha="right")
        axis.set_yticks(list(range(counts.shape[0])))
        axis.set_yticklabels(labels, fontsize=6)
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class")
        axis.set_title(f"{head} ({n_seeds} seed{'s' if n_seeds != 1 else ''} summed)", fontsize=9)
        colorbar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        colorbar.set_label("% of the true class", fontsize=7)
        colorbar.ax.tick_params(labelsize=6)
    return _save(figure, path)


def plot_sweep(records: Sequence[RunRecord], values: Sequence[Any], keys: Sequence[str],
               path: str | Path, param: str) -> Path:
    from .stats import summarize
    from .labels import PERCENT_KEYS, metric_label

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
        axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label="mean ± std over seeds")
        axis.set_title(metric_label(key))
        axis.set_xlabel(param)
        axis.set_ylabel(metric_label(key))
        axis.legend(fontsize=7)
        if not numeric:
            axis.set_xticks(positions)
            axis.set_xticklabels([str(v) for v in values])
        elif len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 100:
            axis.set_xscale("log")
        axis.grid(alpha=0.3)
    return _save(figure, path)
