"""``unimargin sweep``: one hyper-parameter of one head over a list of values, × seeds.

The parameter is either a head hyper-parameter (``build_head`` keyword, e.g. lmdl's
``delta_d``) or a training option (TrainConfig field, e.g. ``lr``, ``feat_dim``). A name
that is both (lmdl's ``momentum`` is the centroid EMA, the optimiser also has one) must be
written ``head.NAME`` or ``train.NAME``. Every other setting is the same for every value
(the head's recommended optimiser settings unless overridden), as in ``compare``.

Outputs in ``out``: ``runs/<param>=<value>/seed<k>/``, ``records.json``, ``report.md``,
``report.html`` and ``sweep.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .compare import (add_run_footer, base_training_options, check_overrides, DEFAULT_DATASET, DEFAULT_EPOCHS, _canonical_command, _load_eval_data, _time_sentence,
                      run_tasks)
from .records import RunRecord, completed_runs
from .render import Document
from .stats import summarize
from .tables import (
    format_summary,
    higher_is_better,
    metric_keys,
    metric_label,
    sweep_table,
)

__all__ = ["SweepResult", "SWEEP_METRICS", "parse_values", "resolve_param", "run_sweep",
           "build_sweep_document", "write_sweep_report"]

SWEEP_METRICS = ["sw", "cw", "uni", "uni_at_learned", "sep_auc", "intra_class_cosine",
                 "inter_class_angle_min", "compactness_ratio", "centroid_margin_min"]


def _parse_one(text: str) -> Any:
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_values(text: str | Sequence[Any]) -> list[Any]:
    """``"0.5,1.5,3"`` → [0.5, 1.5, 3]; ints, floats, true/false, none, else strings."""
    if isinstance(text, str):
        values = [_parse_one(part) for part in text.split(",") if part.strip()]
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
    jobs: int = 1,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Train ``head`` once per (value, seed) with ``param`` set to the value."""
    from unimargin.heads import list_heads
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
        from unimargin.heads import build_head

        build_head(head, 2, 4, **run_params)  # checks the hyper-parameter value itself
        settings[f"{head} ({name}={value})"] = dict({k: getattr(cfg, k) for k in OPTIMIZER_FIELDS},
                                                     head_params=dict(cfg.head_params))
    splits, _, y_test = _load_eval_data(base)

    started = time.perf_counter()
    tasks, task_values = [], []
    for seed in seed_list:
        for value in value_list:
            run_base, run_params = options_for(value)
            run_dir = out / "runs" / _value_dir_name(name, value) / f"seed{seed}"
            tasks.append((run_base, head, seed, run_params, str(run_dir), reuse))
            task_values.append(value)
    finished: dict[int, RunRecord] = {}

    def on_record(index: int, record: RunRecord) -> None:
        record.param_value = task_values[index]
        finished[index] = record
        (out / "records.json").write_text(json.dumps([finished[i].to_json() for i in sorted(finished)],
                                                     indent=1, default=str))

    records = run_tasks(tasks, jobs, on_record, log)
    wall = time.perf_counter() - started
    from .compare import settings_from_records

    settings = settings_from_records(records, settings, key_of=lambda r: f"{head} ({name}={r.param_value})")
    if command is None:
        command = _canonical_command("sweep", dict(
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
               "n_test": int(len(y_test)), "num_classes": len(splits.classes)},
    )


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
