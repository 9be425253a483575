"""The ``compare`` and ``sweep`` sub-commands; ``unimargin.cli`` calls :func:`register`.

Option precedence: built-in defaults < ``--config`` YAML (TrainConfig fields, plus
``heads`` / ``seeds`` for compare) < command-line flags.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["register", "compare_main", "sweep_main"]

# Training options forwarded to every run (flag dest == TrainConfig field).
_TRAIN_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--model", dict(type=str, help="backbone (default: the dataset's default model)")),
    ("--feat-dim", dict(type=int, help="feature dimension d (default 64)")),
    ("--batch-size", dict(type=int, help="global batch size (default 128)")),
    ("--optimizer", dict(type=str, choices=["sgd", "adamw"], help="override every head's optimiser")),
    ("--lr", dict(type=float, help="override every head's learning rate")),
    ("--momentum", dict(type=float, help="override every head's SGD momentum")),
    ("--nesterov", dict(action=argparse.BooleanOptionalAction, default=None, help="override Nesterov")),
    ("--weight-decay", dict(type=float, help="override every head's weight decay")),
    ("--schedule", dict(type=str, choices=["cosine", "multistep", "constant"], help="override the LR schedule")),
    ("--warmup-epochs", dict(type=float, help="override the warm-up length")),
    ("--grad-clip", dict(type=float, help="max global gradient norm (default off)")),
    ("--limit-train", dict(type=int, help="use the first N training samples")),
    ("--limit-test", dict(type=int, help="use the first N test samples")),
    ("--data-dir", dict(type=str, help="dataset directory (fashion-mnist, cifar, folder, npz)")),
    ("--num-threads", dict(type=int, help="torch threads per run")),
    ("--device", dict(type=str, choices=["auto", "cpu", "cuda"], help="device (default auto)")),
]
_TRAIN_DESTS = [flag[2:].replace("-", "_") for flag, _ in _TRAIN_FLAGS]


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=str, default=None, help="dataset name (default mnist1d)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are FIRST..FIRST+N-1 (default 0)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (same for every run)")
    parser.add_argument("--out", type=str, default=None, help="output directory")
    parser.add_argument("--unknown-classes", type=str, default=None,
                        help="comma-separated class names or indices held out of training (open-set section)")
    parser.add_argument("--head-param", action="append", default=[], metavar="HEAD:NAME=VALUE",
                        help="a head hyper-parameter, e.g. lmdl:delta_d=3 (repeatable)")
    parser.add_argument("--config", type=str, default=None, help="YAML file of training options")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs trained in parallel processes (default: min(2, CPU count)); "
                             "results do not depend on it")
    parser.add_argument("--reuse", action="store_true",
                        help="keep runs in OUT that already finished (continue an interrupted command)")
    for flag, kwargs in _TRAIN_FLAGS:
        parser.add_argument(flag, **kwargs)


def register(subparsers) -> None:
    """Add ``compare`` and ``sweep`` to the ``unimargin`` command's sub-parsers."""
    from .compare import DEFAULT_EPOCHS, DEFAULT_HEADS

    compare = subparsers.add_parser(
        "compare",
        help="A/B report: several heads × seeds with the same budget",
        description=(
            "Train the same backbone with several heads over several seeds and write report.md / "
            "report.html (tables, paired tests against softmax, learned threshold vs t*, plots). "
            f"With no arguments: mnist1d, heads {','.join(DEFAULT_HEADS)}, 3 seeds, {DEFAULT_EPOCHS} epochs."
        ),
    )
    compare.add_argument("--heads", type=str, default=None,
                         help=f"comma-separated heads or 'all' (default {','.join(DEFAULT_HEADS)})")
    _add_common(compare)
    compare.set_defaults(func=compare_main)

    sweep = subparsers.add_parser(
        "sweep",
        help="one hyper-parameter of one head over several values × seeds",
        description="Train HEAD with PARAM set to each value (× seeds) and write a table and plot of metrics vs value.",
    )
    sweep.add_argument("--head", type=str, required=True, help="head name, e.g. lmdl")
    sweep.add_argument("--param", type=str, required=True,
                       help="head hyper-parameter (e.g. delta_d) or training option (e.g. lr); "
                            "head.NAME / train.NAME when ambiguous")
    sweep.add_argument("--values", type=str, required=True, help="comma-separated values, e.g. 0.5,1.5,3,6")
    _add_common(sweep)
    sweep.set_defaults(func=sweep_main)


def _jobs(args: argparse.Namespace) -> int:
    if args.jobs is not None:
        return args.jobs
    return max(1, min(2, os.cpu_count() or 1))


def _parse_head_params(items: list[str]) -> dict[str, dict[str, Any]]:
    from .sweep import _parse_one

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, sep, rest = item.partition(":")
        name, eq, value = rest.partition("=")
        if not sep or not eq or not head or not name:
            raise ValueError(f"--head-param: expected HEAD:NAME=VALUE (e.g. lmdl:delta_d=3), got {item!r}")
        out.setdefault(head.strip(), {})[name.strip()] = _parse_one(value)
    return out


def _gather(args: argparse.Namespace, extra_keys: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options from YAML < flags, values of ``extra_keys`` from YAML) ."""
    options: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    if args.config:
        from unimargin.train.config import load_yaml

        loaded = load_yaml(args.config)
        for key in extra_keys:
            if key in loaded:
                extras[key] = loaded.pop(key)
        for key in ("head", "seed", "out", "resume", "overwrite"):
            if key in loaded:
                raise ValueError(f"{args.config}: option {key!r} is set by the command itself; remove it")
        options.update(loaded)
    for dest in _TRAIN_DESTS:
        value = getattr(args, dest, None)
        if value is not None:
            options[dest] = value
    if args.unknown_classes:
        options["unknown_classes"] = [c.strip() for c in args.unknown_classes.split(",") if c.strip()]
    return options, extras


def compare_main(args: argparse.Namespace) -> int:
    from .compare import DEFAULT_HEADS, DEFAULT_SEEDS, run_compare, write_compare_report

    options, extras = _gather(args, ("heads", "seeds"))
    head_params = options.pop("head_params", None) or {}
    if not isinstance(head_params, dict) or not all(isinstance(v, dict) for v in head_params.values()):
        raise ValueError(f"{args.config}: head_params must map head names to mappings, e.g. "
                         "{lmdl: {delta_d: 3.0}}")
    for head, params in _parse_head_params(args.head_param).items():
        head_params.setdefault(head, {}).update(params)
    heads = args.heads or extras.get("heads") or ",".join(DEFAULT_HEADS)
    if isinstance(heads, list):
        heads = ",".join(heads)
    result = run_compare(
        heads=heads,
        head_params=head_params,
        **_run_options(args, options, extras, default_seeds=DEFAULT_SEEDS, default_out="runs/compare"),
    )
    md_path, html_path = write_compare_report(result)
    print(f"[compare] wrote {md_path} and {html_path} ({result.wall_time_s:.0f} s)", file=sys.stderr)
    return 0 if any(r.ok for r in result.records) else 1


def _run_options(args: argparse.Namespace, options: dict, extras: dict, *, default_seeds: int,
                 default_out: str) -> dict:
    """Keyword arguments shared by run_compare and run_sweep: flags win over the YAML config."""
    from .compare import DEFAULT_DATASET, DEFAULT_EPOCHS

    return dict(
        dataset=args.dataset or options.pop("dataset", None) or DEFAULT_DATASET,
        seeds=args.seeds if args.seeds is not None else int(extras.get("seeds", default_seeds)),
        epochs=args.epochs if args.epochs is not None else int(options.pop("epochs", DEFAULT_EPOCHS)),
        out=args.out or default_out,
        overrides={k: v for k, v in options.items() if k not in ("dataset", "epochs")},
        first_seed=args.first_seed,
        reuse=args.reuse,
        jobs=_jobs(args),
    )


def sweep_main(args: argparse.Namespace) -> int:
    from .sweep import run_sweep, write_sweep_report

    options, extras = _gather(args, ("seeds",))
    head_params = _parse_head_params(args.head_param)
    stray = sorted(set(head_params) - {args.head})
    if stray:
        raise ValueError(f"--head-param: given for head(s) {stray}, but the sweep trains only {args.head!r}")
    yaml_params = options.pop("head_params", None) or {}
    fixed = dict(yaml_params.get(args.head, yaml_params) if isinstance(yaml_params, dict) else {})
    fixed.update(head_params.get(args.head, {}))
    result = run_sweep(
        head=args.head,
        param=args.param,
        values=args.values,
        head_params=fixed,
        **_run_options(args, options, extras, default_seeds=3, default_out="runs/sweep"),
    )
    md_path, html_path = write_sweep_report(result)
    print(f"[sweep] wrote {md_path} and {html_path} ({result.wall_time_s:.0f} s)", file=sys.stderr)
    return 0 if any(r.ok for r in result.records) else 1
