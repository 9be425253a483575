"""Options shared by ``compare`` and ``sweep``: the grid (seeds, jobs, reuse/overwrite),
the same training flags as ``train`` (options.py) and ``--head-param HEAD:NAME=VALUE``.

Precedence: built-in defaults < ``--config`` YAML (TrainConfig fields, plus ``heads`` /
``seeds`` for compare) < command-line flags.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .options import add_training_options, training_options

# Set per run by the grid itself, or by a grid-level flag below.
GRID_FIELDS = ("head", "head_params", "seed", "out", "resume", "overwrite", "epochs", "dataset", "quiet")


def add_grid_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--dataset", type=str, default=None, help="dataset name (default mnist1d)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are FIRST..FIRST+N-1 (default 0)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (same for every run)")
    parser.add_argument("--out", type=str, default=None, help=f"output directory (default runs/{what})")
    parser.add_argument("--head-param", action="append", default=[], metavar="HEAD:NAME=VALUE",
                        help="a head hyper-parameter, e.g. lmdl:delta_d=3 (repeatable)")
    parser.add_argument("--config", type=str, default=None, help="YAML file of training options")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs trained in parallel processes (default: min(2, CPU count)); results "
                             "do not depend on it; with --device cuda each worker gets its own GPU")
    parser.add_argument("--reuse", action="store_true",
                        help="keep runs in OUT that already finished with the same config and data "
                             "(continue an interrupted command)")
    parser.add_argument("--overwrite", action="store_true", help=f"retrain into an existing {what} directory")
    add_training_options(parser, exclude=GRID_FIELDS)


def jobs(args: argparse.Namespace) -> int:
    if args.jobs is not None:
        return args.jobs
    return max(1, min(2, os.cpu_count() or 1))


def gather(args: argparse.Namespace, extra_keys: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training options from YAML < flags, values of ``extra_keys`` from YAML)."""
    from unimargin.train.config import load_yaml

    options: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    if args.config:
        loaded = load_yaml(args.config)
        for key in extra_keys:
            if key in loaded:
                extras[key] = loaded.pop(key)
        for key in ("head", "seed", "out", "resume", "overwrite"):
            if key in loaded:
                raise ValueError(f"{args.config}: option {key!r} is set by the command itself; remove it")
        options.update(loaded)
    options.update(training_options(args, exclude=GRID_FIELDS))
    return options, extras


def head_params_from(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``head_params`` of the YAML ({head: {name: value}}) updated by ``--head-param``."""
    from unimargin.train.config import parse_assignments

    head_params = options.pop("head_params", None) or {}
    if not isinstance(head_params, dict) or not all(isinstance(v, dict) for v in head_params.values()):
        raise ValueError(f"{args.config}: head_params must map head names to mappings, e.g. "
                         "{lmdl: {delta_d: 3.0}}")
    head_params = {h: dict(p) for h, p in head_params.items()}
    for head, params in parse_assignments(args.head_param, allow_head_prefix=True).items():
        head_params.setdefault(head, {}).update(params)
    return head_params


def run_options(args: argparse.Namespace, options: dict, extras: dict, *, default_seeds: int,
                default_out: str) -> dict:
    """Keyword arguments shared by run_compare and run_sweep: flags win over the YAML config."""
    from unimargin.experiments import DEFAULT_DATASET, DEFAULT_EPOCHS

    return dict(
        dataset=args.dataset or options.pop("dataset", None) or DEFAULT_DATASET,
        seeds=args.seeds if args.seeds is not None else int(extras.get("seeds", default_seeds)),
        epochs=args.epochs if args.epochs is not None else int(options.pop("epochs", DEFAULT_EPOCHS)),
        out=args.out or default_out,
        overrides={k: v for k, v in options.items() if k not in ("dataset", "epochs")},
        first_seed=args.first_seed,
        reuse=args.reuse,
        overwrite=args.overwrite,
        jobs=jobs(args),
    )
