"""The run directory: its files, refusing to clobber another run, and :func:`load_run`.

``DIR/config.yaml`` (the resolved config, re-runnable), ``DIR/metrics.jsonl`` (one JSON line
per epoch), ``DIR/summary.json`` (the outcome) and ``DIR/checkpoints/last.pt``; every file
is written atomically through :mod:`unimargin.io`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .net import UnimarginNet, build_net

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", CHECKPOINT_DIR)


def checkpoint_path(run_dir: str) -> str:
    """``run_dir/checkpoints/last.pt``."""
    return os.path.join(run_dir, CHECKPOINT_DIR, LAST_CHECKPOINT)


@dataclass
class LoadedRun:
    """A trained run loaded by :func:`load_run`: ``model`` is the UnimarginNet (eval mode;
    ``model(x)`` gives features of raw inputs), ``head`` is ``model.head``."""

    model: UnimarginNet
    head: nn.Module
    config: TrainConfig
    epoch: int
    history: list
    classes: list = field(default_factory=list)
    path: str = ""
    in_shape: tuple = ()


def _checkpoint_path(path: str) -> str:
    return checkpoint_path(path) if os.path.isdir(path) else path


def load_run(path: str | os.PathLike, build_backbone: Callable | None = None) -> LoadedRun:
    """Load a run directory (its ``checkpoints/last.pt``) or a checkpoint file.

    Raises ValueError naming the file when it is missing, corrupt or inconsistent.
    """
    ckpt_path = _checkpoint_path(os.fspath(path))
    ckpt = load_checkpoint(ckpt_path)
    try:
        cfg = TrainConfig.from_dict(ckpt["config"], source=f"checkpoint {ckpt_path!r}")
        info = ckpt["data"]
        net = build_net(cfg, info["in_shape"], int(info["num_classes"]),
                        mean=ckpt["model"].get("input_mean"), std=ckpt["model"].get("input_std"),
                        build_backbone=build_backbone)
        net.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise ValueError(f"checkpoint {ckpt_path!r} does not match its own config: {exc}") from exc
    net.eval()
    return LoadedRun(model=net, head=net.head, config=cfg, epoch=int(ckpt["epoch"]),
                     history=list(ckpt["history"]), classes=list(info.get("classes", [])),
                     path=ckpt_path, in_shape=tuple(info["in_shape"]))


def check_out_dir(cfg: TrainConfig) -> None:
    """Refuse to write into a directory holding another run (unless resume/overwrite)."""
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ValueError(f"out: {cfg.out!r} exists and is not a directory")
    if not os.path.isdir(cfg.out) or cfg.resume or cfg.overwrite:
        return
    present = [f for f in RUN_FILES if os.path.exists(os.path.join(cfg.out, f))]
    if present:
        raise ValueError(f"output directory {cfg.out!r} already holds a run ({', '.join(present)}); "
                         f"use --resume to continue it or --overwrite to replace it")


def clear_run_files(out: str) -> None:
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)


def append_jsonl(record: dict, path: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
