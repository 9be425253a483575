"""``unimargin compare``: train heads × seeds with the same budget; the report
(:mod:`unimargin.report.compare`) is written from the :class:`CompareResult` it returns.

Protocol (docs/compare.md):
- Every head trains the same backbone (``model``, ``feat_dim``), on the same data, for the
  same number of epochs and batch size, over the same seeds ``first_seed`` + 0..N−1.
- Each head uses its own recommended optimiser settings
  (:func:`unimargin.heads.recommended_settings`) unless a setting is overridden, in which
  case the override applies to every head; the report lists both.
- Runs that diverge (or fail) are listed and excluded from every mean, std and paired test.

Outputs in ``out``: ``runs/<head>/seed<k>/`` (one engine run directory each),
``records.json``, then (report) ``report.md``, ``report.html`` and the PNG plots.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from unimargin.report import plots
from unimargin.report.compare import CompareResult, settings_from_records
from unimargin.report.records import RunOutputs, RunRecord

from .runner import (Progress, RunTask, base_training_options, check_overrides, load_eval_data,
                     plan_devices, rerun_command, run_outputs, run_tasks, write_records)

__all__ = ["DEFAULT_DATASET", "DEFAULT_HEADS", "DEFAULT_SEEDS", "DEFAULT_EPOCHS", "resolve_heads",
           "run_compare", "check_output_dir", "plotted_runs"]

DEFAULT_DATASET = "mnist1d"
DEFAULT_HEADS = ("softmax", "lmdl", "bce-u")
DEFAULT_SEEDS = 3
# Measured budget: the no-argument compare (3 heads × 3 seeds) finishes in well under
# 10 minutes on 2 CPU cores (docs/compare.md states the measured time).
DEFAULT_EPOCHS = 20

_RESERVED = {"head", "seed", "out", "epochs", "dataset", "head_params", "resume", "overwrite"}


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


def check_output_dir(out: Path, reuse: bool, overwrite: bool, what: str = "compare") -> None:
    """Refuse to train into a directory holding an earlier experiment unless told how:
    ``reuse`` (keep its finished runs) or ``overwrite`` (retrain every run)."""
    if reuse and overwrite:
        raise ValueError("give either --reuse or --overwrite, not both")
    if reuse or overwrite or not out.exists():
        return
    if any((out / name).exists() for name in ("records.json", "runs", "tune")):
        raise ValueError(f"out: {str(out)!r} already holds a {what}; pass --reuse to keep its finished "
                         "runs or --overwrite to retrain them")


def plotted_runs(tasks: Sequence[RunTask], records: dict[int, RunRecord]) -> list[int]:
    """Indices of the runs whose test outputs the report plots: per head, its first run in
    grid order that finished ok (one seed per head). ``records`` may be partial (runs
    finished so far): a head is left out until every run of it before the chosen one has
    finished, so the answer for the full grid never differs from a partial one."""
    chosen: list[int] = []
    decided: set[str] = set()
    for index, task in enumerate(tasks):
        if task.head in decided:
            continue
        record = records.get(index)
        if record is None:
            decided.add(task.head)  # unknown yet: a later run of this head cannot be chosen
        elif record.ok:
            chosen.append(index)
            decided.add(task.head)
    return chosen


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
    overwrite: bool = False,
    jobs: int = 1,
    command: str | None = None,
    log: Callable[[str], None] = print,
    progress_bar: bool = False,
    tune: Any = None,
) -> CompareResult:
    """Train every head on every seed and collect records, outputs and open-set metrics.

    ``overrides`` are TrainConfig fields applied to every run; ``head_params[head]`` the
    hyper-parameters of one head. ``reuse`` keeps finished runs whose config, data
    fingerprint and checkpoint still match (runner.py); ``overwrite`` retrains into an
    existing directory. ``jobs`` runs train in parallel processes (results do not depend
    on it); with ``device="cuda"`` each worker gets its own GPU. ``tune`` (a
    :class:`unimargin.experiments.tune.TuneSpec`) first tunes each head on seed 0's
    validation split and trains every seed at the chosen values. Progress lines
    (:class:`~unimargin.experiments.runner.Progress`) go to ``log``; ``progress_bar`` shows
    a tqdm bar instead of the per-epoch lines (the CLI sets it on a terminal).
    """
    from unimargin.train import TrainConfig
    from unimargin.train.config import OPTIMIZER_FIELDS, resolve_config

    head_names = resolve_heads(heads)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds: expected a positive number of seeds, got {seeds!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    bad = sorted(set(overrides) & _RESERVED)
    if bad:
        raise ValueError(f"overrides: {bad} are set by compare itself (use its own arguments)")
    check_overrides(overrides)
    head_params = {h: dict(p) for h, p in (head_params or {}).items()}
    stray = sorted(set(head_params) - set(head_names))
    if stray:
        raise ValueError(f"head_params: given for head(s) {stray} that are not compared ({head_names})")

    out = Path(out)
    check_output_dir(out, reuse, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    base = base_training_options(overrides, dataset, epochs)
    seed_list = [first_seed + i for i in range(seeds)]

    # Resolve every head's settings first: bad names/options fail before any training.
    for head in head_names:
        resolve_config(TrainConfig.from_dict(
            dict(base, head=head, head_params=head_params.get(head, {}), seed=seed_list[0],
                 out=str(out / "runs" / head / f"seed{seed_list[0]}")), source="compare"))
    splits = load_eval_data(base)
    started = time.perf_counter()
    stale = out / "tune" / "tune.json"
    if tune is None and stale.exists():  # the report must not show an earlier invocation's tuning
        stale.unlink()
        log(f"[compare] removed {stale}: this compare is not tuned")

    tuning: dict[str, Any] = {}
    per_head_options: dict[str, dict[str, Any]] = {h: dict(base) for h in head_names}
    if tune is not None:
        from .tune import tune_heads

        tuning, chosen = tune_heads(tune, base, head_names, head_params, out, seed_list[0], jobs=jobs,
                                    reuse=reuse, log=log, progress_bar=progress_bar)
        for head, values in chosen.items():
            for key, value in values.items():
                if key.startswith("head."):
                    head_params.setdefault(head, {})[key[len("head."):]] = value
                else:
                    per_head_options[head][key] = value

    settings: dict[str, dict[str, Any]] = {}
    for head in head_names:
        cfg = resolve_config(TrainConfig.from_dict(
            dict(per_head_options[head], head=head, head_params=head_params.get(head, {}), seed=seed_list[0],
                 out=str(out / "runs" / head / f"seed{seed_list[0]}")), source="compare"))
        settings[head] = {k: getattr(cfg, k) for k in OPTIMIZER_FIELDS}
        settings[head]["head_params"] = dict(cfg.head_params)
        settings[head]["milestones"] = cfg.milestones
    resolved_first = resolve_config(TrainConfig.from_dict(
        dict(base, head=head_names[0], seed=seed_list[0], out=str(out)), source="compare"))

    # Seed-major order: an interrupted compare still has complete pairs for the first seeds.
    grid = [(seed, head) for seed in seed_list for head in head_names]
    tasks = [RunTask(options=per_head_options[head], head=head, seed=seed, head_params=head_params.get(head, {}),
                     run_dir=str(out / "runs" / head / f"seed{seed}"), reuse=reuse, label=f"{head} seed {seed}")
             for seed, head in grid]
    from_trial: set[str] = set()  # labels of runs that are their head's chosen trial
    if tuning:
        from .tune import best_trial_dir

        for task in tasks:
            trial = best_trial_dir(tuning, task.head, out) if task.seed == seed_list[0] else None
            if trial is not None and trial.is_dir() and not Path(task.run_dir).exists():
                # The first seed's run at the chosen values, trained for --epochs, is the best
                # trial itself (same config, seed and data): start from its copy; the reuse
                # checks (config, data fingerprint, checkpoint) still decide whether it is kept.
                import shutil

                shutil.copytree(trial, task.run_dir, ignore=shutil.ignore_patterns(".lock", "*.tmp"))
                task.reuse = True
                from_trial.add(task.label)
    finished: dict[int, RunRecord] = {}

    log(f"[grid] {len(tasks)} runs, {min(jobs, len(tasks))} at a time, into {out}")
    with Progress(tasks, log, bar=progress_bar) as progress:
        def on_record(index: int, record: RunRecord) -> None:
            if record.reused and tasks[index].label in from_trial and not reuse:
                record.reused = False  # trained by this invocation (as its tuning trial)
            finished[index] = record
            progress.finished(index, record)
            write_records(out, [finished[i] for i in sorted(finished)])

        plot_outputs: dict[int, RunOutputs] = {}

        def prepare_report() -> None:
            """On the core the last runs leave free (run_tasks ``on_idle``): the test outputs
            of the runs the plots show, if already decided, and the plotting imports."""
            for index in plotted_runs(tasks, finished):
                if index not in plot_outputs:
                    plot_outputs[index] = run_outputs(tasks[index].run_dir, splits.x_test, splits.y_test,
                                                      tasks[index].head, tasks[index].seed)
            plots.preload()

        records = run_tasks(tasks, jobs, on_record, progress.write, on_event=progress.event,
                            devices=plan_devices(base.get("device"), max(1, min(jobs, len(tasks)))),
                            on_idle=prepare_report)
    outputs: list[RunOutputs] = []
    for index in plotted_runs(tasks, dict(enumerate(records))):
        task = tasks[index]
        outputs.append(plot_outputs.get(index)
                       or run_outputs(task.run_dir, splits.x_test, splits.y_test, task.head, task.seed))
    write_records(out, records)
    wall = time.perf_counter() - started

    if command is None:
        command = rerun_command("compare", dict(
            dataset=dataset, heads=head_names, seeds=seeds, first_seed=first_seed or None, epochs=epochs,
            out=str(out),
            head_param={f"{h}:{k}": v for h, p in head_params.items() for k, v in p.items()
                        if tune is None or f"{h}.{k}" not in tune.params} or None,
            **(dict(tune=",".join(f"{p}={dict(tune.ranges)[p][0]:g}:{dict(tune.ranges)[p][1]:g}"
                                  if p in dict(tune.ranges) else p for p in tune.params),
                    trials=tune.trials, tune_epochs=tune.epochs, tune_metric=tune.metric) if tune else {}),
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
        class_names=[str(c) for c in splits.classes],
        unknown_class_names=([str(c) for c in splits.unknown_class_names]
                             if splits.x_unknown is not None else None),
        command=command,
        wall_time_s=wall,
        out=str(out),
        setup={
            "model": resolved_first.model,
            "feat_dim": resolved_first.feat_dim,
            "batch_size": resolved_first.batch_size,
            "n_train": int(len(splits.y_train)),
            "n_test": int(len(splits.y_test)),
            "n_unknown": None if splits.x_unknown is None else int(len(splits.x_unknown)),
            "num_classes": len(splits.classes),
            **({"tuning": tuning} if tuning else {}),
        },
    )
