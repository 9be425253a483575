"""``--tensorboard``: the run's per-epoch numbers as TensorBoard event files in ``DIR/tensorboard``.

A :class:`~unimargin.train.engine.TrainCallback`; it writes what ``metrics.jsonl`` holds
(nothing is computed twice): ``train/loss`` and ``train/<term>``, ``val/<key>`` for every
closed-set number of the validation split (sw, cw, uni in %, t*, learned threshold, ...),
``lr``, and two histograms of the validation scores: the positive metrics p_i and the
hardest negatives n_i (SPEC §1), whose overlap is what one unified threshold must cut.
Needs the optional extra ``unimargin[tensorboard]``.
"""

from __future__ import annotations

import os

import torch

from unimargin.metrics.keys import KEYS

from .engine import TrainCallback

__all__ = ["TensorBoardCallback", "open_summary_writer"]


def open_summary_writer(log_dir: str):
    """``torch.utils.tensorboard.SummaryWriter`` or a ValueError naming the extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ValueError("--tensorboard needs the tensorboard package: "
                         "pip install 'unimargin[tensorboard]'") from exc
    return SummaryWriter(log_dir=log_dir)


class TensorBoardCallback(TrainCallback):
    """Writes scalars at ``on_epoch_end`` and score histograms at ``on_validation_scores``."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.writer = open_summary_writer(log_dir)

    def on_validation_scores(self, epoch: int, scores: torch.Tensor, labels: torch.Tensor) -> None:
        from unimargin.metrics import positive_negative

        p, n = positive_negative(scores, labels)
        self.writer.add_histogram("val_scores/positive", p, epoch)
        self.writer.add_histogram("val_scores/hardest_negative", n, epoch)

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        w = self.writer
        w.add_scalar("lr", record["lr"], epoch)
        w.add_scalar("train/loss", record["train"]["loss"], epoch)
        for term, value in record["train"].get("terms", {}).items():
            w.add_scalar(f"train/{term}", value, epoch)
        for key, value in (record.get("val") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "n":
                percent = key in KEYS and KEYS[key].unit == "%"
                w.add_scalar(f"val/{key}", 100 * value if percent else value, epoch)
        w.flush()

    def close(self) -> None:
        self.writer.close()
