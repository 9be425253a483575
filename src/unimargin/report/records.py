"""Run records: what the report needs from one training run (one head, one seed).

A :class:`RunRecord` is built from the engine's ``train()`` summary plus the run's
``metrics.jsonl`` history (:func:`record_from_run_dir`), or directly in tests. The report
code only ever reads records, so it can be tested on synthetic ones without training.

Diverged (or failed) runs keep their record, so the report can list them, but every mean,
standard deviation and paired test uses completed runs only (:func:`completed_runs`).

Records of both engine generations are read (docs/compare.md): runs of the issue-13
protocol have per-epoch ``"val"`` metrics, ``final`` on the test split at the selected
epoch, ``final_val``, ``per_class`` and ``splits``; older runs have per-epoch ``"test"``
metrics only. :func:`history_split` says which one a record's curves come from, so the
report can label it. :func:`read_tuning` reads ``OUT/tune/tune.json`` (issue 13 tuning).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "RunRecord",
    "RunOutputs",
    "COMPLETED",
    "DIVERGED",
    "FAILED",
    "completed_runs",
    "heads_in_order",
    "read_history",
    "read_records",
    "record_from_summary",
    "history_split",
    "TUNE_FILE",
    "TuneStudy",
    "Tuning",
    "read_tuning",
]

COMPLETED = "completed"
DIVERGED = "diverged"
FAILED = "failed"


@dataclass
class RunRecord:
    """One training run as the report sees it.

    ``final`` holds the flat test metrics at the selected epoch (engine ``evaluate_outputs``
    keys: sw, cw, uni, t_star, learned_threshold, uni_at_learned, uni_deployed, ...,
    geometry keys); ``open_set`` the verification / rejection metrics on held-out classes
    (keys prefixed ``verif_`` and ``reject_``), empty when there are none; ``history`` the
    per-epoch JSON objects of ``metrics.jsonl``; ``param_value`` the swept value in a sweep.
    From the issue-13 engine: ``final_val`` (validation keys at the selected epoch),
    ``per_class`` (test split: ``classes``, ``accuracy``, ``confusion`` K×(K+1),
    ``worst_confused``), ``splits`` (``n_train``, ``n_val``, ``n_test``, ``n_unknown``),
    ``selected_epoch`` and ``select_epoch`` ("last" | "best"); empty / None in old records.
    """

    head: str
    seed: int
    status: str
    final: dict[str, Any] = field(default_factory=dict)
    runtime_s: float = 0.0
    epochs_completed: int = 0
    message: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    out: str = ""
    open_set: dict[str, Any] = field(default_factory=dict)
    param_value: Any = None
    reused: bool = False  # taken from an earlier invocation (--reuse), not trained now
    final_val: dict[str, Any] = field(default_factory=dict)
    per_class: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] = field(default_factory=dict)
    selected_epoch: int | None = None
    select_epoch: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED

    def value(self, key: str) -> float | None:
        """The metric ``key`` from ``final`` or ``open_set`` as a finite float, else None."""
        raw = self.final.get(key, self.open_set.get(key))
        if raw is None or isinstance(raw, bool):
            return None
        try:
            number = float(raw)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "seed": self.seed,
            "status": self.status,
            "message": self.message,
            "runtime_s": self.runtime_s,
            "epochs_completed": self.epochs_completed,
            "final": self.final,
            "open_set": self.open_set,
            "config": self.config,
            "out": self.out,
            "param_value": self.param_value,
            "reused": self.reused,
            "final_val": self.final_val,
            "per_class": self.per_class,
            "splits": self.splits,
            "selected_epoch": self.selected_epoch,
            "select_epoch": self.select_epoch,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any], base: str | Path | None = None) -> "RunRecord":
        """The inverse of :meth:`to_json` (one ``records.json`` row). A relative ``out`` is
        resolved against ``base`` (records.json stores run paths relative to the compare
        directory) and the run's history is read from there when it exists."""
        known = {f.name for f in dataclasses.fields(cls)} - {"history"}
        missing = [k for k in ("head", "seed", "status") if k not in row]
        if missing:
            raise ValueError(f"records row {row!r}: missing {missing}")
        record = cls(**{k: v for k, v in row.items() if k in known})
        if record.out and base is not None and not Path(record.out).is_absolute():
            record.out = str(Path(base) / record.out)
        record.history = read_history(record.out) if record.out and Path(record.out).is_dir() else []
        return record


@dataclass
class RunOutputs:
    """Test-set outputs of one representative run per head, for the plots.

    ``features`` (N×d), ``scores`` (N×K), ``labels`` (N,) as CPU tensors; ``t_star`` (of
    the test split), ``learned_threshold`` and ``deployed_threshold`` (t* of the validation
    split, from the record) in score units; ``centroid_margins`` (K,) for linear heads.
    """

    head: str
    seed: int
    features: Any
    scores: Any
    labels: Any
    t_star: float | None = None
    learned_threshold: float | None = None
    centroid_margins: Any = None
    deployed_threshold: float | None = None


def completed_runs(records: Iterable[RunRecord]) -> list[RunRecord]:
    """Records that finished normally: the only ones used in means and tests."""
    return [record for record in records if record.ok]


def heads_in_order(records: Iterable[RunRecord]) -> list[str]:
    """Head names in first-appearance order."""
    seen: dict[str, None] = {}
    for record in records:
        seen.setdefault(record.head, None)
    return list(seen)


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Parse ``run_dir/metrics.jsonl`` (one JSON object per line); [] when it is missing."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    history = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            history.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {line_number} is not valid JSON ({error})") from error
    return history


def read_records(out_dir: str | Path) -> list[RunRecord]:
    """Every run of ``out_dir/records.json`` (written by a compare or sweep) as records."""
    path = Path(out_dir) / "records.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no records.json (is {out_dir} a compare or sweep directory?)")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of run rows, got {type(rows).__name__}")
    return [RunRecord.from_json(row, base=out_dir) for row in rows]


OPEN_SET_PREFIXES = ("verif_", "reject_")


def record_from_summary(head: str, seed: int, summary: dict[str, Any],
                        run_dir: str | Path | None = None) -> RunRecord:
    """Build a record from the engine's ``train()`` summary and the run's metrics.jsonl
    (read from ``run_dir`` as it is now, default the summary's ``out``)."""
    status = str(summary.get("status", FAILED))
    out = str(run_dir) if run_dir is not None else str(summary.get("out", ""))
    final = dict(summary.get("final") or {})
    # the engine's open-set keys (held-out classes) go to their own section of the record
    open_set = {k: final.pop(k) for k in list(final) if k.startswith(OPEN_SET_PREFIXES)}
    # per_class is the summary's own entry (CONTRACT.md); evaluate_model(per_class=True)
    # nests it inside the metrics instead: accept both, keep ``final`` flat.
    nested = final.pop("per_class", None)
    per_class = summary.get("per_class") or (nested if isinstance(nested, dict) else None) or {}
    selected = summary.get("selected_epoch")
    return RunRecord(
        head=head,
        seed=seed,
        status=status,
        final=final,
        open_set=open_set,
        runtime_s=float(summary.get("runtime_s") or 0.0),
        epochs_completed=int(summary.get("epochs_completed") or 0),
        message=str(summary.get("message") or ""),
        history=read_history(out) if out else [],
        config=dict(summary.get("config") or {}),
        out=out,
        final_val=dict(summary.get("final_val") or {}),
        per_class=dict(per_class),
        splits=dict(summary.get("splits") or {}),
        selected_epoch=None if selected is None or isinstance(selected, bool) else int(selected),
        select_epoch=None if summary.get("select_epoch") is None else str(summary["select_epoch"]),
    )


def history_split(history: Iterable[dict[str, Any]]) -> str | None:
    """The split a run's per-epoch metrics come from: ``"val"`` (issue-13 engine), ``"test"``
    (older runs, which evaluated the test split every epoch), None when no epoch has
    either."""
    sections = {key for row in history for key in ("val", "test") if isinstance(row.get(key), dict)}
    return "val" if "val" in sections else "test" if "test" in sections else None


# --------------------------------------------------------------------------- tuning
TUNE_FILE = Path("tune") / "tune.json"


@dataclass(frozen=True)
class TuneStudy:
    """One head's tuning study: ``space`` {param: {"low", "high", "log"}}, every trial
    ({"number", "params", "value", "state"}), the chosen ``best`` values and their
    validation score ``best_value``."""

    head: str
    space: dict[str, dict[str, Any]]
    trials: list[dict[str, Any]]
    best: dict[str, Any]
    best_value: float | None


@dataclass(frozen=True)
class Tuning:
    """``OUT/tune/tune.json`` (written by the tuner, CONTRACT.md): the validation metric
    maximised (``"val.sw"`` | ``"val.uni"``), trials per head and one study per head."""

    metric: str
    trials_per_head: int | None
    studies: list[TuneStudy]


def _tune_error(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what} (expected the tune.json of docs/compare.md: "
                      '{"metric", "trials_per_head", "heads": {head: {"space", "trials", "best", '
                      '"best_value"}}})')


def read_tuning(out_dir: str | Path) -> Tuning | None:
    """Parse ``out_dir/tune/tune.json``; None when there is none (the compare was not tuned).
    A malformed file raises ValueError naming the file and the bad entry."""
    path = Path(out_dir) / TUNE_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise _tune_error(path, f"not valid JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("heads"), dict):
        raise _tune_error(path, 'no "heads" object')
    studies = []
    for head, study in data["heads"].items():
        if not isinstance(study, dict):
            raise _tune_error(path, f"heads[{head!r}] is not an object")
        trials = study.get("trials") or []
        if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
            raise _tune_error(path, f"heads[{head!r}].trials is not a list of objects")
        space = study.get("space") or {}
        if not isinstance(space, dict):
            raise _tune_error(path, f"heads[{head!r}].space is not an object")
        best_value = study.get("best_value")
        studies.append(TuneStudy(
            head=str(head), space={str(k): dict(v) if isinstance(v, dict) else {"value": v}
                                   for k, v in space.items()},
            trials=sorted(trials, key=lambda t: (t.get("number") is None, t.get("number") or 0)),
            best=dict(study.get("best") or {}),
            best_value=None if best_value is None or isinstance(best_value, bool) else float(best_value)))
    trials_per_head = data.get("trials_per_head")
    return Tuning(metric=str(data.get("metric", "val.sw")),
                  trials_per_head=None if trials_per_head is None else int(trials_per_head),
                  studies=studies)
