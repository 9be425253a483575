"""``unimargin compare``: train heads × seeds with the same budget and write the A/B report.

Protocol (docs/compare.md):
- Every head trains the same backbone (``model``, ``feat_dim``), on the same data, for the
  same number of epochs and batch size, over the same seeds 0..N−1 (``first_seed`` + i).
- Each head uses its own recommended optimiser settings
  (:func:`unimargin.train.recommended_settings`) unless a setting is overridden, in which
  case the override applies to every head; the report lists both.
- Runs that diverge (or fail) are listed as such and excluded from every mean, standard
  deviation and paired test (pairs are formed on seeds where both heads completed).
- The baseline of the paired tests is ``softmax`` when it is among the heads, else the
  first head.

Outputs in ``out``: ``runs/<head>/seed<k>/`` (one engine run directory each),
``records.json`` (every run's status and final metrics), ``report.md``, ``report.html``
(self-contained) and the PNG plots.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from unimargin.metrics.keys import KEYS

from .records import (
    COMPLETED,
    FAILED,
    RunOutputs,
    RunRecord,
    completed_runs,
    read_history,
    record_from_summary,
)
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
    "DEFAULT_DATASET",
    "DEFAULT_HEADS",
    "DEFAULT_SEEDS",
    "DEFAULT_EPOCHS",
    "CompareResult",
    "run_compare",
    "build_compare_document",
    "write_compare_report",
    "resolve_heads",
    "run_outputs",
]

DEFAULT_DATASET = "mnist1d"
DEFAULT_HEADS = ("softmax", "lmdl", "bce-u")
DEFAULT_SEEDS = 3
# Measured budget: the no-argument compare (3 heads × 3 seeds) finishes in well under
# 10 minutes on 2 CPU cores (docs/compare.md states the measured time).
DEFAULT_EPOCHS = 20

# Verification keys shown in the open-set table: the directed verif_* keys of the vocabulary.
_OPEN_SET_VERIF_KEYS = [k for k, v in KEYS.items() if k.startswith("verif_") and v.direction]
_OPEN_SET_REJECT_KEYS = ["reject_auroc", "reject_open_set_accuracy", "reject_known_accept_rate",
                         "reject_unknown_reject_rate"]


@dataclass
class CompareResult:
    """Everything the report needs; built by :func:`run_compare` or by hand in tests."""

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


def resolve_heads(spec: str | Sequence[str]) -> list[str]:
    """``"all"`` → every registered head; ``"a,b"`` → ["a", "b"] (checked, duplicates removed)."""
    from unimargin.heads import list_heads

    valid = list_heads()
    if isinstance(spec, str):
        names = valid if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    else:
        names = list(spec)
    if not names:
        raise ValueError(f"heads: expected a comma-separated list of heads or 'all'; valid heads: {', '.join(valid)}")
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"heads: unknown head(s) {unknown}; valid heads: {', '.join(valid)} (or 'all')")
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- evaluation
def run_outputs(run_dir: str | Path, x_test: torch.Tensor, y_test: torch.Tensor,
                x_unknown: torch.Tensor | None = None, y_unknown: torch.Tensor | None = None,
                head_name: str = "", seed: int = 0) -> tuple[RunOutputs, dict[str, Any]]:
    """Load a finished run and compute its test outputs (for plots) and open-set metrics."""
    from unimargin.metrics import centroid_margins, uniform_accuracy
    from unimargin.metrics.evaluate import choose_threshold, compute_outputs, open_set_metrics
    from unimargin.train import load_run

    loaded = load_run(run_dir)
    features, scores = compute_outputs(loaded.model, loaded.head, x_test)
    head = loaded.head
    margins = None
    decision = head.linear_decision()
    if decision is not None:
        weight, bias = decision
        margins = centroid_margins(features, y_test, weight.detach().float().cpu(), bias.detach().float().cpu())
    learned = head.threshold
    outputs = RunOutputs(
        head=head_name or head.name,
        seed=seed,
        features=features,
        scores=scores,
        labels=y_test,
        t_star=float(uniform_accuracy(scores, y_test).threshold),
        learned_threshold=None if learned is None else float(learned),
        centroid_margins=margins,
    )
    open_set: dict[str, Any] = {}
    if x_unknown is not None and y_unknown is not None and len(x_unknown) > 0:
        unknown_features, unknown_scores = compute_outputs(loaded.model, loaded.head, x_unknown)
        # Until runs carry a validation split, the only known split here is the test split.
        threshold, source = choose_threshold(head, scores, y_test, split="known test set")
        open_set = open_set_metrics(head, scores, y_test, unknown_features, unknown_scores,
                                    y_unknown, threshold, source)
    return outputs, open_set


# --------------------------------------------------------------------------- running
# Training options that `compare` / `sweep` accept as flags (commands.py); any other
# override is written to a YAML file that the rerun command passes with --config.
CLI_OPTIONS = ("model", "feat_dim", "batch_size", "optimizer", "lr", "momentum", "nesterov",
               "weight_decay", "schedule", "warmup_epochs", "grad_clip", "limit_train", "limit_test",
               "data_dir", "num_threads", "device", "unknown_classes")


def _flag_parts(key: str, value: Any) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if value is None:
        return []
    if value is True:
        return [flag]
    if value is False:
        return ["--no-" + key.replace("_", "-")]
    if isinstance(value, (list, tuple)):
        return [flag, ",".join(str(v) for v in value)]
    if isinstance(value, dict):
        parts: list[str] = []
        for sub_key, sub_value in value.items():
            parts += [flag, f"{sub_key}={sub_value}"]
        return parts
    return [flag, str(value)]


def _canonical_command(name: str, flags: dict[str, Any], overrides: dict[str, Any], out: Path) -> str:
    """The exact command that reruns this compare/sweep, every setting explicit."""
    parts = ["unimargin", name]
    for key, value in flags.items():
        parts += _flag_parts(key, value)
    extra = {k: v for k, v in overrides.items() if k not in CLI_OPTIONS and k != "quiet"}
    for key, value in overrides.items():
        if key in CLI_OPTIONS:
            parts += _flag_parts(key, value)
    if extra:
        from unimargin.train.config import save_yaml

        path = Path(out) / f"{name}_options.yaml"
        save_yaml(extra, path)
        parts += ["--config", str(path)]
    return shlex.join(parts)


def _reusable_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return summary if summary.get("status") in (COMPLETED, "diverged") else None


def _changed_fields(cfg, saved: dict[str, Any]) -> list[str]:
    """Fields defining what a run trains (engine IDENTITY_FIELDS + epochs) that differ
    between the requested config (resolved now) and a saved run's resolved config."""
    from unimargin.train.config import IDENTITY_FIELDS, resolve_config

    resolved = resolve_config(cfg)

    def normal(value):
        return json.dumps(value, sort_keys=True, default=str)

    return [name for name in (*IDENTITY_FIELDS, "epochs")
            if normal(getattr(resolved, name)) != normal(saved.get(name))]


def _train_one(base: dict[str, Any], head: str, seed: int, head_params: dict[str, Any],
               run_dir: Path, reuse: bool, log: Callable[[str], None]) -> RunRecord:
    from unimargin.train import TrainConfig, train

    options = dict(base)
    options.update(head=head, seed=seed, out=str(run_dir), head_params=dict(head_params),
                   overwrite=True, resume=False)
    cfg = TrainConfig.from_dict(options, source="compare")
    if reuse:
        summary = _reusable_summary(run_dir)
        if summary is not None:
            changed = _changed_fields(cfg, summary.get("config") or {})
            if changed:
                log(f"[run] {run_dir}: saved run differs in {changed}; retraining")
            else:
                log(f"[run] reuse {run_dir}: {summary.get('status')}")
                record = record_from_summary(head, seed, summary)
                record.reused = True
                return record
    started = time.perf_counter()
    try:
        summary = train(cfg)
    except (ValueError, TypeError):
        raise  # configuration errors are the user's to fix, not a "failed run"
    except Exception as error:  # a crash inside one run must not lose the other runs
        log(f"[run] {run_dir} FAILED: {type(error).__name__}: {error}")
        return RunRecord(head=head, seed=seed, status=FAILED, message=f"{type(error).__name__}: {error}",
                         runtime_s=time.perf_counter() - started, out=str(run_dir),
                         history=read_history(run_dir))
    record = record_from_summary(head, seed, summary)
    log(f"[run] {run_dir}: {record.status} in {record.runtime_s:.1f}s "
        f"(sw={record.value('sw')}, uni={record.value('uni')})")
    return record


def _train_task(task: tuple) -> RunRecord:
    """Worker entry point (module level so a spawned process can unpickle it)."""
    base, head, seed, head_params, run_dir, reuse = task
    return _train_one(base, head, seed, head_params, Path(run_dir), reuse, _stderr_log)


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_tasks(tasks: Sequence[tuple], jobs: int, on_record: Callable[[int, RunRecord], None],
              log: Callable[[str], None]) -> list[RunRecord]:
    """Train every (base, head, seed, head_params, run_dir, reuse) task, ``jobs`` at a time.

    Runs are independent and seeded, and each uses ``num_threads`` threads, so the results
    do not depend on ``jobs``. Parallel runs use spawned processes (a forked child of a
    process that already ran OpenMP code can hang). ``on_record(index, record)`` is called
    in the parent as each run finishes. Returns the records in task order.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected a positive integer, got {jobs!r}")
    records: list[RunRecord | None] = [None] * len(tasks)
    if jobs == 1 or len(tasks) <= 1:
        for index, task in enumerate(tasks):
            base, head, seed, head_params, run_dir, reuse = task
            records[index] = _train_one(base, head, seed, head_params, Path(run_dir), reuse, log)
            on_record(index, records[index])
        return records  # type: ignore[return-value]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context) as pool:
        futures = {pool.submit(_train_task, task): index for index, task in enumerate(tasks)}
        for future in as_completed(futures):
            index = futures[future]
            records[index] = future.result()
            on_record(index, records[index])
    return records  # type: ignore[return-value]


def _load_eval_data(base: dict[str, Any]):
    """The test (and unknown-class) tensors the engine evaluates on (``load_splits`` applies
    ``limit_train`` / ``limit_test`` exactly as training does), for plots and the open set."""
    from unimargin.train import TrainConfig, load_splits

    cfg = TrainConfig.from_dict(dict(base, head="softmax"), source="compare")
    splits = load_splits(cfg)
    return splits, splits.x_test, splits.y_test


def run_compare(
    dataset: str = DEFAULT_DATASET,
    heads: str | Sequence[str] = DEFAULT_HEADS,
    seeds: int = DEFAULT_SEEDS,
    epochs: int = DEFAULT_EPOCHS,
    out: str | Path = "runs/compare",
    overrides: dict[str, Any] | None = None,
    head_params: dict[str, dict[str, Any]] | None = None,
    first_seed: int = 0,
    reuse: bool = False,
    jobs: int = 1,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> CompareResult:
    """Train every head on every seed and collect records, outputs and open-set metrics.

    ``overrides`` are TrainConfig fields applied to every run (model, feat_dim, batch_size,
    lr, optimizer, ..., data_dir, unknown_classes, limit_train, limit_test);
    ``head_params[head]`` the hyper-parameters of one head. ``reuse`` keeps runs whose
    ``summary.json`` already says completed/diverged (to finish an interrupted compare).
    ``jobs`` runs train in parallel processes (results do not depend on it).
    """
    from unimargin.train import TrainConfig
    from unimargin.train.config import OPTIMIZER_FIELDS, resolve_config

    head_names = resolve_heads(heads)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds: expected a positive number of seeds, got {seeds!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    reserved = {"head", "seed", "out", "epochs", "dataset", "head_params", "resume", "overwrite"}
    bad = sorted(set(overrides) & reserved)
    if bad:
        raise ValueError(f"overrides: {bad} are set by compare itself (use its own arguments)")
    check_overrides(overrides)
    head_params = {h: dict(p) for h, p in (head_params or {}).items()}
    stray = sorted(set(head_params) - set(head_names))
    if stray:
        raise ValueError(f"head_params: given for head(s) {stray} that are not compared ({head_names})")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_training_options(overrides, dataset, epochs)
    seed_list = [first_seed + i for i in range(seeds)]

    # Resolve every head's settings first: bad names/options fail before any training.
    settings: dict[str, dict[str, Any]] = {}
    for head in head_names:
        cfg = resolve_config(TrainConfig.from_dict(
            dict(base, head=head, head_params=head_params.get(head, {}), seed=seed_list[0],
                 out=str(out / "runs" / head / f"seed{seed_list[0]}")), source="compare"))
        settings[head] = {k: getattr(cfg, k) for k in OPTIMIZER_FIELDS}
        settings[head]["head_params"] = dict(cfg.head_params)
        settings[head]["milestones"] = cfg.milestones
    resolved_first = resolve_config(TrainConfig.from_dict(
        dict(base, head=head_names[0], seed=seed_list[0], out=str(out)), source="compare"))

    splits, x_test, y_test = _load_eval_data(base)
    started = time.perf_counter()
    # Seed-major order: an interrupted compare still has complete pairs for the first seeds.
    tasks = [(base, head, seed, head_params.get(head, {}), str(out / "runs" / head / f"seed{seed}"), reuse)
             for seed in seed_list for head in head_names]
    finished: dict[int, RunRecord] = {}

    def on_record(index: int, record: RunRecord) -> None:
        finished[index] = record
        _write_records(out, [finished[i] for i in sorted(finished)])

    records = run_tasks(tasks, jobs, on_record, log)
    outputs: list[RunOutputs] = []
    for task, record in zip(tasks, records):
        if not record.ok:
            continue
        need_plot = not any(o.head == record.head for o in outputs)
        if need_plot or splits.x_unknown is not None:
            run_output, open_set = run_outputs(task[4], x_test, y_test, splits.x_unknown, splits.y_unknown,
                                               record.head, record.seed)
            record.open_set = open_set
            if need_plot:
                outputs.append(run_output)
    _write_records(out, records)
    wall = time.perf_counter() - started

    if command is None:
        command = _canonical_command("compare", dict(
            dataset=dataset, heads=head_names, seeds=seeds, first_seed=first_seed or None, epochs=epochs,
            out=str(out),
            head_param={f"{h}:{k}": v for h, p in head_params.items() for k, v in p.items()} or None,
        ), overrides, out)
    settings = settings_from_records(records, settings)
    overridden = [k for k in overrides if k in OPTIMIZER_FIELDS]
    return CompareResult(
        dataset=dataset,
        heads=head_names,
        seeds=seed_list,
        epochs=epochs,
        records=records,
        outputs=outputs,
        settings=settings,
        overridden=overridden,
        class_names=list(splits.classes),
        unknown_class_names=list(splits.unknown_class_names) if splits.x_unknown is not None else None,
        command=command,
        wall_time_s=wall,
        out=str(out),
        setup={
            "model": resolved_first.model,
            "feat_dim": resolved_first.feat_dim,
            "batch_size": resolved_first.batch_size,
            "n_train": int(len(splits.y_train)),
            "n_test": int(len(y_test)),
            "n_unknown": None if splits.x_unknown is None else int(len(splits.x_unknown)),
            "num_classes": len(splits.classes),
        },
    )


def settings_from_records(records: Sequence[RunRecord], fallback: dict[str, dict[str, Any]],
                          key_of=lambda record: record.head) -> dict[str, dict[str, Any]]:
    """The optimiser settings the runs actually used (their saved configs), per group.

    Reused runs may come from an earlier invocation with other defaults, so the report
    states what each run used; a group whose runs disagree gets ``varies_across_seeds``.
    """
    from unimargin.train.config import OPTIMIZER_FIELDS

    out = {name: dict(values) for name, values in fallback.items()}
    seen: dict[str, set] = {}
    for record in records:
        if not record.config:
            continue
        values = {k: record.config.get(k) for k in OPTIMIZER_FIELDS}
        values["head_params"] = dict(record.config.get("head_params") or {})
        values["milestones"] = record.config.get("milestones")
        name = key_of(record)
        seen.setdefault(name, set()).add(json.dumps(values, sort_keys=True, default=str))
        if len(seen[name]) == 1:
            out[name] = values
    for name, variants in seen.items():
        if len(variants) > 1:
            out[name]["varies_across_seeds"] = True
    return out


def _write_records(out: Path, records: Sequence[RunRecord]) -> None:
    (out / "records.json").write_text(json.dumps([r.to_json() for r in records], indent=1, default=str))


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


def check_overrides(overrides: dict[str, Any]) -> None:
    """Every override must be a TrainConfig field (shared by compare and sweep)."""
    from unimargin.train.config import config_fields

    unknown = sorted(set(overrides) - set(config_fields()))
    if unknown:
        raise ValueError(f"overrides: unknown training option(s) {unknown}; valid: {sorted(config_fields())}")


def base_training_options(overrides: dict[str, Any], dataset: str, epochs: int) -> dict[str, Any]:
    """The options every run of a compare or sweep shares."""
    base = dict(overrides, dataset=dataset, epochs=epochs)
    base.setdefault("quiet", True)
    # One thread per run unless told otherwise: the small default models train several times
    # faster single-threaded, and several threads on a shared 2-core machine oversubscribe it.
    base.setdefault("num_threads", 1)
    return base


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
