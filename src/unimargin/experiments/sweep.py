"""``unimargin sweep``: one hyper-parameter of one head over a list of values, × seeds; the
report (:mod:`unimargin.report.sweep`) is written from the :class:`SweepResult` it returns.

The parameter is either a head hyper-parameter (``build_head`` keyword, e.g. lmdl's
``delta_d``) or a training option (TrainConfig field, e.g. ``lr``, ``feat_dim``). A name
that is both (lmdl's ``momentum`` is the centroid EMA, the optimiser also has one) must be
written ``head.NAME`` or ``train.NAME``. Every other setting is the same for every value.

Outputs in ``out``: ``runs/<param>=<value>/seed<k>/``, ``records.json``, then the report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from unimargin.report.compare import settings_from_records
from unimargin.report.records import RunRecord
from unimargin.report.sweep import SweepResult

from .compare import DEFAULT_DATASET, DEFAULT_EPOCHS, check_output_dir
from .runner import (Progress, RunTask, base_training_options, check_overrides, load_eval_data,
                     plan_devices, rerun_command, run_tasks, write_records)

__all__ = ["parse_values", "resolve_param", "run_sweep"]


def parse_values(text: str | Sequence[Any]) -> list[Any]:
    """``"0.5,1.5,3"`` → [0.5, 1.5, 3]; each item through the one scalar parser
    (:func:`unimargin.train.config.parse_value`)."""
    from unimargin.train.config import parse_value

    if isinstance(text, str):
        values = [parse_value(part) for part in text.split(",") if part.strip()]
    else:
        values = list(text)
    if not values:
        raise ValueError("values: expected a comma-separated list of at least one value, e.g. 0.5,1.5,3")
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"values: duplicates in {values}")
    return values


def resolve_param(head: str, param: str) -> tuple[str, str]:
    """Return ("head" | "train", name) for ``param``; ambiguous or unknown names raise."""
    from unimargin.heads import head_hparams
    from unimargin.train.config import config_fields

    head_names = set(head_hparams(head))
    train_names = set(config_fields()) - {"head", "head_params", "seed", "out", "resume", "overwrite"}
    if param.startswith("head."):
        name = param[len("head."):]
        if name not in head_names:
            raise ValueError(f"param: head {head!r} has no hyper-parameter {name!r}; valid: {sorted(head_names)}")
        return "head", name
    if param.startswith("train."):
        name = param[len("train."):]
        if name not in train_names:
            raise ValueError(f"param: no training option {name!r}; valid: {sorted(train_names)}")
        return "train", name
    in_head, in_train = param in head_names, param in train_names
    if in_head and in_train:
        raise ValueError(f"param: {param!r} is both a hyper-parameter of head {head!r} and a training option; "
                         f"write head.{param} or train.{param}")
    if in_head:
        return "head", param
    if in_train:
        return "train", param
    raise ValueError(f"param: {param!r} is neither a hyper-parameter of head {head!r} ({sorted(head_names)}) "
                     f"nor a training option ({sorted(train_names)})")


def _value_dir_name(param: str, value: Any) -> str:
    return f"{param}={value}".replace("/", "_").replace(" ", "_")


def run_sweep(
    head: str,
    param: str,
    values: str | Sequence[Any],
    dataset: str = DEFAULT_DATASET,
    seeds: int = 3,
    epochs: int = DEFAULT_EPOCHS,
    out: str | Path = "runs/sweep",
    overrides: dict[str, Any] | None = None,
    head_params: dict[str, Any] | None = None,
    first_seed: int = 0,
    reuse: bool = False,
    overwrite: bool = False,
    jobs: int = 1,
    command: str | None = None,
    log: Callable[[str], None] = print,
    progress_bar: bool = False,
) -> SweepResult:
    """Train ``head`` once per (value, seed) with ``param`` set to the value. ``reuse``,
    ``overwrite``, ``jobs``, ``log`` and ``progress_bar`` as in
    :func:`unimargin.experiments.compare.run_compare`."""
    from unimargin.heads import build_head, list_heads
    from unimargin.train import TrainConfig
    from unimargin.train.config import OPTIMIZER_FIELDS, resolve_config

    if head not in list_heads():
        raise ValueError(f"head: unknown head {head!r}; valid heads: {', '.join(list_heads())}")
    target, name = resolve_param(head, param)
    value_list = parse_values(values)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds: expected a positive number of seeds, got {seeds!r}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_overrides(overrides)
    if target == "train" and name in overrides:
        raise ValueError(f"param {name!r} is swept; do not also override it")
    fixed_head_params = dict(head_params or {})
    if target == "head" and name in fixed_head_params:
        raise ValueError(f"param {name!r} is swept; do not also fix it in head_params")

    out = Path(out)
    check_output_dir(out, reuse, overwrite, what="sweep")
    out.mkdir(parents=True, exist_ok=True)
    base = base_training_options(overrides, dataset, epochs)
    seed_list = [first_seed + i for i in range(seeds)]

    def options_for(value):
        run_base, run_params = dict(base), dict(fixed_head_params)
        if target == "head":
            run_params[name] = value
        else:
            run_base[name] = value
        return run_base, run_params

    settings: dict[str, dict[str, Any]] = {}
    for value in value_list:  # fail on a bad value before training anything
        run_base, run_params = options_for(value)
        cfg = resolve_config(TrainConfig.from_dict(
            dict(run_base, head=head, head_params=run_params, seed=seed_list[0], out=str(out)), source="sweep"))
        build_head(head, 2, 4, **run_params)  # checks the hyper-parameter value itself
        settings[f"{head} ({name}={value})"] = dict({k: getattr(cfg, k) for k in OPTIMIZER_FIELDS},
                                                     head_params=dict(cfg.head_params))
    splits = load_eval_data(base)

    started = time.perf_counter()
    tasks, task_values = [], []
    for seed in seed_list:
        for value in value_list:
            run_base, run_params = options_for(value)
            run_dir = out / "runs" / _value_dir_name(name, value) / f"seed{seed}"
            tasks.append(RunTask(options=run_base, head=head, seed=seed, head_params=run_params,
                                 run_dir=str(run_dir), reuse=reuse, label=f"{name}={value} seed {seed}"))
            task_values.append(value)
    finished: dict[int, RunRecord] = {}

    log(f"[grid] {len(tasks)} runs, {min(jobs, len(tasks))} at a time, into {out}")
    with Progress(tasks, log, bar=progress_bar) as progress:
        def on_record(index: int, record: RunRecord) -> None:
            record.param_value = task_values[index]
            finished[index] = record
            progress.finished(index, record)
            write_records(out, [finished[i] for i in sorted(finished)])

        records = run_tasks(tasks, jobs, on_record, progress.write, on_event=progress.event,
                            devices=plan_devices(base.get("device"), max(1, min(jobs, len(tasks)))))
    wall = time.perf_counter() - started
    settings = settings_from_records(records, settings, key_of=lambda r: f"{head} ({name}={r.param_value})")
    if command is None:
        command = rerun_command("sweep", dict(
            head=head, param=param, values=value_list, dataset=dataset, seeds=seeds,
            first_seed=first_seed or None, epochs=epochs, out=str(out),
            head_param={f"{head}:{k}": v for k, v in fixed_head_params.items()} or None,
        ), overrides, out)
    first = resolve_config(TrainConfig.from_dict(dict(base, head=head, seed=seed_list[0], out=str(out)), source="sweep"))
    return SweepResult(
        head=head, param=name, target=target, values=value_list, seeds=seed_list, epochs=epochs,
        dataset=dataset, records=records, settings=settings,
        overridden=[k for k in overrides if k in OPTIMIZER_FIELDS] + ([name] if target == "train" else []),
        command=command, wall_time_s=wall, out=str(out),
        setup={"model": first.model, "feat_dim": first.feat_dim, "batch_size": first.batch_size,
               "n_test": int(len(splits.y_test)), "num_classes": len(splits.classes)},
    )
