"""Per-head hyper-parameter tuning for ``compare --tune`` (issue 13, SPEC §3.9).

For each head, an Optuna study (TPE sampler seeded with ``TuneSpec.sampler_seed``) maximises
a VALIDATION metric (``val.sw`` or ``val.uni``) of seed ``first_seed`` runs; then every seed of
the compare trains at the chosen values. The test split never enters a choice: a trial's
value is its summary's ``final_val`` (the engine's validation split of the training data,
CONTRACT.md), or, for an older run, its last ``metrics.jsonl`` "val" entry — never "final".

Search spaces (docs/compare.md, "Tuning"):

- ``lr``: log-uniform over [rec/10, rec*10], rec = ``heads.recommended_settings(head)["lr"]``;
- ``weight_decay``: log-uniform over [1e-6, 1e-2];
- a head hyper-parameter ``HEAD.NAME``: :data:`DEFAULT_HEAD_RANGES`, or an explicit
  ``HEAD.NAME=LOW:HIGH`` (log-uniform when 0 < LOW and HIGH/LOW >= 10, else uniform); any
  item may carry an explicit range, e.g. ``lr=1e-3:1e-1``.

Trials are ordinary runs under ``OUT/tune/<head>/trial-<k>/`` trained by the same runner as
the grid (process pool, ``reuse`` by config + data fingerprint + checkpoint). Trials are
asked :data:`ASK_BATCH` at a time per head whatever ``jobs`` is, so the chosen values do not
depend on ``--jobs``; the sampler is deterministic given the values it is told, so a rerun
with ``--reuse`` asks the same trials and reuses the finished ones. Everything is written to
``OUT/tune/tune.json`` (CONTRACT.md), rewritten after every round. When trials train for
the grid's epochs, the first seed's grid run of a head is its chosen trial (copied, then
checked like any reused run), so tuning costs ``trials`` runs per head, not ``trials + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from unimargin.io import atomic_write_json
from unimargin.report.records import RunRecord

from .runner import Progress, RunTask, run_tasks

__all__ = ["TuneSpec", "parse_tune", "search_space", "trial_value", "tune_heads", "best_trial_dir", "DEFAULT_HEAD_RANGES",
           "TRAIN_PARAMS", "ASK_BATCH", "TUNE_JSON"]

TUNE_JSON = Path("tune") / "tune.json"
# Training options that may be tuned (per head; the value chosen for a head applies to it alone).
TRAIN_PARAMS = ("lr", "weight_decay")
WEIGHT_DECAY_RANGE = (1e-6, 1e-2)
# Trials asked per head and round: fixed, so the sampler's history (and the choice) is the
# same with any --jobs; jobs only sets how many trial runs train at once.
ASK_BATCH = 2
# Default ranges (low, high, log) of head hyper-parameters; other parameters need HEAD.NAME=LOW:HIGH.
DEFAULT_HEAD_RANGES: dict[str, dict[str, tuple[float, float, bool]]] = {
    "lmdl": {"delta_d": (0.5, 6.0, True), "delta_v": (0.1, 1.0, True), "margin_weight": (0.1, 10.0, True),
             "compact_weight": (0.1, 10.0, True)},
    "normface": {"scale": (4.0, 64.0, True)},
    "cosface": {"scale": (4.0, 64.0, True), "margin": (0.05, 0.5, False)},
    "arcface": {"scale": (4.0, 64.0, True), "margin": (0.1, 0.7, False)},
    "center": {"center_weight": (1e-3, 0.1, True)},
    "bce-u": {"scale": (4.0, 64.0, True), "neg_weight": (0.1, 10.0, True)},
    "bce-d": {"scale": (4.0, 64.0, True), "neg_weight": (0.1, 10.0, True)},
}


@dataclass(frozen=True)
class TuneSpec:
    """What to tune: ``params`` = items of ``--tune`` (``"lr"``, ``"weight_decay"``,
    ``"HEAD.NAME"``), ``ranges`` = explicit {item: (low, high)}, ``trials`` per head,
    ``epochs`` per trial (None: the compare's), ``metric`` "sw" | "uni" (validation)."""

    params: tuple[str, ...]
    ranges: tuple[tuple[str, tuple[float, float]], ...] = ()
    trials: int = 8
    epochs: int | None = None
    metric: str = "sw"
    sampler_seed: int = 0

    def range_of(self, item: str) -> tuple[float, float] | None:
        return dict(self.ranges).get(item)


def parse_tune(text: str, trials: int = 8, epochs: int | None = None, metric: str = "sw") -> TuneSpec:
    """``"lr,weight_decay,lmdl.delta_d=0.5:3"`` -> :class:`TuneSpec` (checked)."""
    from unimargin.train.config import parse_value

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"--trials: expected a positive integer, got {trials!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"--tune-epochs: expected a positive integer, got {epochs!r}")
    if metric not in ("sw", "uni"):
        raise ValueError(f"--tune-metric: expected 'sw' or 'uni', got {metric!r}")
    params, ranges = [], []
    for raw in (part.strip() for part in str(text).split(",")):
        if not raw:
            continue
        name, _, span = raw.partition("=")
        name = name.strip()
        if name not in TRAIN_PARAMS and "." not in name:
            raise ValueError(f"--tune: {name!r} is not tunable; give lr, weight_decay or HEAD.NAME "
                             "(a head hyper-parameter, e.g. lmdl.delta_d), optionally =LOW:HIGH")
        if name in params:
            raise ValueError(f"--tune: {name!r} given twice")
        if span:
            low_text, sep, high_text = span.partition(":")
            low, high = parse_value(low_text), parse_value(high_text)
            if not sep or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) \
                    or not (math.isfinite(low) and math.isfinite(high)) or not low < high:
                raise ValueError(f"--tune: range of {name!r} must be LOW:HIGH with finite numbers LOW < HIGH, "
                                 f"got {span!r}")
            ranges.append((name, (float(low), float(high))))
        params.append(name)
    if not params:
        raise ValueError("--tune: expected lr, weight_decay and/or HEAD.NAME, e.g. --tune lr")
    return TuneSpec(tuple(params), tuple(ranges), trials, epochs, metric)


def _interval(low: float, high: float, log: bool | None = None) -> dict[str, Any]:
    if log is None:
        log = low > 0 and high / low >= 10
    return {"low": float(low), "high": float(high), "log": bool(log)}


def search_space(spec: TuneSpec, head: str) -> dict[str, dict[str, Any]]:
    """{param: {"low", "high", "log"}} of ``head``: ``lr``, ``weight_decay`` and the
    ``HEAD.NAME`` items of this head (as ``head.NAME``); module docstring for the ranges."""
    from unimargin.heads import head_hparams, recommended_settings

    space: dict[str, dict[str, Any]] = {}
    for item in spec.params:
        explicit = spec.range_of(item)
        if item == "lr":
            rec = float(recommended_settings(head)["lr"])
            space["lr"] = _interval(*explicit) if explicit else _interval(rec / 10, rec * 10, True)
        elif item == "weight_decay":
            space["weight_decay"] = _interval(*explicit) if explicit else _interval(*WEIGHT_DECAY_RANGE, True)
        else:
            owner, name = item.split(".", 1)
            if owner != head:
                continue
            if name not in head_hparams(head):
                raise ValueError(f"--tune: head {head!r} has no hyper-parameter {name!r}; "
                                 f"valid: {sorted(head_hparams(head))}")
            default = DEFAULT_HEAD_RANGES.get(head, {}).get(name)
            if explicit is None and default is None:
                raise ValueError(f"--tune: no default range for {item}; give one, e.g. --tune {item}=LOW:HIGH")
            space[f"head.{name}"] = _interval(*explicit) if explicit else _interval(*default)
        if item in space and space[item]["log"] and space[item]["low"] <= 0:
            raise ValueError(f"--tune: a log-uniform range of {item!r} needs LOW > 0")
    return space


def trial_value(record: RunRecord, metric: str) -> float | None:
    """The validation ``metric`` of a finished trial: ``final_val`` (selected epoch), else the
    last ``metrics.jsonl`` "val" entry; None for a failed/diverged run or a missing value.
    The test split ("final") is never read."""
    if not record.ok:
        return None
    value = record.final_val.get(metric) if record.final_val else None
    if value is None:
        rows = [row["val"] for row in record.history if isinstance(row.get("val"), dict)]
        value = rows[-1].get(metric) if rows else None
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _import_optuna():
    try:
        import optuna
    except ImportError as error:
        raise ValueError("compare --tune needs Optuna: pip install unimargin[tune] (or pip install optuna)") from error
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {name: trial.suggest_float(name, box["low"], box["high"], log=box["log"]) for name, box in space.items()}


def _trial_options(base: dict[str, Any], head_params: dict[str, Any], params: dict[str, float],
                   epochs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    options, hparams = dict(base, epochs=epochs), dict(head_params)
    for name, value in params.items():
        if name.startswith("head."):
            hparams[name[len("head."):]] = value
        else:
            options[name] = value
    return options, hparams


def tune_heads(spec: TuneSpec, base: dict[str, Any], heads: Sequence[str], head_params: dict[str, dict[str, Any]],
               out: Path, seed: int, *, jobs: int = 1, reuse: bool = False,
               log: Callable[[str], None] = print, progress_bar: bool = False
               ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Tune every head; returns (the tune.json object, {head: chosen values}). Chosen keys:
    ``lr``, ``weight_decay`` (training options) and ``head.NAME`` (head hyper-parameters)."""
    optuna = _import_optuna()
    fixed = sorted(p for p in spec.params if p in TRAIN_PARAMS and base.get(p) is not None)
    if fixed:
        raise ValueError(f"--tune {','.join(fixed)}: also fixed for every head (--{fixed[0].replace('_', '-')}); "
                         "tune it or fix it, not both")
    for item in spec.params:
        if "." in item and item.split(".", 1)[0] not in heads:
            raise ValueError(f"--tune {item}: head {item.split('.', 1)[0]!r} is not compared ({', '.join(heads)})")
        if "." in item and item.split(".", 1)[1] in head_params.get(item.split(".", 1)[0], {}):
            raise ValueError(f"--tune {item}: also fixed with --head-param; tune it or fix it, not both")
    epochs = spec.epochs or int(base["epochs"])
    spaces = {head: search_space(spec, head) for head in heads}
    studies = {head: optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=spec.sampler_seed, n_startup_trials=max(2, spec.trials // 2))) for head in heads if spaces[head]}
    result: dict[str, Any] = {"metric": f"val.{spec.metric}", "trials_per_head": spec.trials, "epochs": epochs,
                              "grid_epochs": int(base["epochs"]), "seed": seed, "heads": {}}
    trials_of: dict[str, list[dict[str, Any]]] = {head: [] for head in studies}
    log(f"[tune] {', '.join(studies)}: {spec.trials} trials each on seed {seed}'s validation split, "
        f"maximising val {spec.metric}, {epochs} epochs per trial, into {out / 'tune'}")

    while any(len(trials_of[h]) < spec.trials for h in studies):
        asked, tasks = [], []
        for head, study in studies.items():
            for _ in range(min(ASK_BATCH, spec.trials - len(trials_of[head]))):
                trial = study.ask()
                params = _suggest(trial, spaces[head])
                options, hparams = _trial_options(base, head_params.get(head, {}), params, epochs)
                tasks.append(RunTask(options=options, head=head, seed=seed, head_params=hparams,
                                     run_dir=str(Path(out) / "tune" / head / f"trial-{trial.number}"), reuse=reuse,
                                     label=f"tune {head} trial {trial.number}"))
                asked.append((head, trial, params))
        with Progress(tasks, log, bar=progress_bar, what="trials") as progress:
            records = run_tasks(tasks, jobs, lambda i, r: progress.finished(i, r), progress.write,
                                on_event=progress.event)
        for (head, trial, params), record in zip(asked, records):
            value = trial_value(record, spec.metric)
            if value is None:
                studies[head].tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                studies[head].tell(trial, value)
            trials_of[head].append({"number": trial.number, "params": params, "value": value,
                                    "state": "COMPLETE" if value is not None else "FAIL", "status": record.status,
                                    "out": str(Path("tune") / head / f"trial-{trial.number}")})
        _write(result, spaces, trials_of, out)

    chosen: dict[str, dict[str, float]] = {}
    for head in studies:
        done = [t for t in trials_of[head] if t["value"] is not None]
        if not done:
            log(f"[tune] {head}: no trial completed; training it at its recommended settings")
            continue
        best = max(done, key=lambda t: (t["value"], -t["number"]))  # ties: the earliest trial
        chosen[head] = dict(best["params"])
        log(f"[tune] {head}: chose {_format(best['params'])} (val {spec.metric} {100 * best['value']:.2f}%, "
            f"trial {best['number']})")
    _write(result, spaces, trials_of, out, chosen)
    return result, chosen


def best_trial_dir(tuning: dict[str, Any], head: str, out: Path) -> Path | None:
    """The run directory of ``head``'s chosen trial when it trained for as many epochs as
    the grid's runs (``tuning["grid_epochs"]``), else None."""
    study = tuning.get("heads", {}).get(head) or {}
    if not study.get("best") or tuning.get("epochs") != tuning.get("grid_epochs"):
        return None
    trial = next((t for t in study.get("trials", []) if t["params"] == study["best"] and t["value"] is not None), None)
    return None if trial is None else Path(out) / trial["out"]


def _format(params: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in params.items())


def _write(result, spaces, trials_of, out, chosen=None) -> None:
    for head, trials in trials_of.items():
        done = [t for t in trials if t["value"] is not None]
        best = max(done, key=lambda t: (t["value"], -t["number"])) if done else None
        result["heads"][head] = {"space": spaces[head], "trials": trials,
                                 "best": dict(best["params"]) if best and (chosen is None or head in chosen) else {},
                                 "best_value": best["value"] if best else None}
    atomic_write_json(result, Path(out) / TUNE_JSON)
