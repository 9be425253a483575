"""Run records: what the report needs from one training run (one head, one seed).

A :class:`RunRecord` is built from the engine's ``train()`` summary plus the run's
``metrics.jsonl`` history (:func:`record_from_run_dir`), or directly in tests. The report
code only ever reads records, so it can be tested on synthetic ones without training.

Diverged (or failed) runs keep their record, so the report can list them, but every mean,
standard deviation and paired test uses completed runs only (:func:`completed_runs`).
"""

from __future__ import annotations

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
    "record_from_summary",
]

COMPLETED = "completed"
DIVERGED = "diverged"
FAILED = "failed"


@dataclass
class RunRecord:
    """One training run as the report sees it.

    ``final`` holds the flat test metrics of the last epoch (engine ``evaluate_outputs``
    keys: sw, cw, uni, t_star, learned_threshold, uni_at_learned, ..., geometry keys);
    ``open_set`` the verification / rejection metrics on held-out classes (keys prefixed
    ``verif_`` and ``reject_``), empty when there are none; ``history`` the per-epoch JSON
    objects of ``metrics.jsonl``; ``param_value`` the swept value in a sweep.
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
        }


@dataclass
class RunOutputs:
    """Test-set outputs of one representative run per head, for the plots.

    ``features`` (N×d), ``scores`` (N×K), ``labels`` (N,) as CPU tensors; ``t_star`` and
    ``learned_threshold`` in score units; ``centroid_margins`` (K,) for linear heads.
    """

    head: str
    seed: int
    features: Any
    scores: Any
    labels: Any
    t_star: float | None = None
    learned_threshold: float | None = None
    centroid_margins: Any = None


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
    )
