"""Pieces shared by the sub-command modules: exit codes, the run config from flags + YAML."""

from __future__ import annotations

import argparse
import os

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_DIVERGED = 3


def config_from_args(args: argparse.Namespace):
    """TrainConfig: defaults < ``--config`` file (or, with --resume, the run's config.yaml)
    < flags. ``head_params`` from the file and from ``--head-param`` are merged."""
    from unimargin.train import TrainConfig, load_yaml, merge

    from .options import training_options

    flags = training_options(args)
    base: dict = {}
    source = "flags"
    if args.config:
        base = load_yaml(args.config)
        source = f"config file {args.config!r}"
    elif flags.get("resume"):
        saved = os.path.join(flags.get("out") or TrainConfig.out, "config.yaml")
        if os.path.exists(saved):
            base = load_yaml(saved)
            source = f"config file {saved!r}"
    if "head_params" in flags and isinstance(base.get("head_params"), dict):
        flags["head_params"] = {**base["head_params"], **flags["head_params"]}
    return TrainConfig.from_dict(merge(base, flags), source=source)


def load_split(run, data_dir: str | None):
    """The dataset of a loaded run (``data_dir`` overrides the run's), checked against the
    checkpoint's class names."""
    import dataclasses

    from unimargin.train import load_splits

    cfg = dataclasses.replace(run.config, data_dir=data_dir or run.config.data_dir)
    splits = load_splits(cfg)
    if [str(c) for c in splits.classes] != [str(c) for c in run.classes]:
        raise ValueError(f"the dataset's classes {splits.classes} differ from the checkpoint's {run.classes}")
    return splits
