"""``unimargin train``: one head on one dataset (flags generated from TrainConfig)."""

from __future__ import annotations

import json

from .common import EXIT_DIVERGED, EXIT_OK, config_from_args
from .options import add_training_options


def register(sub) -> None:
    p = sub.add_parser("train", help="train one head on one dataset",
                       description="Train a backbone + head; writes config.yaml, metrics.jsonl, "
                                   "summary.json and checkpoints/last.pt in --out. Runs unchanged "
                                   "under torchrun --nproc-per-node N. Optimiser options left "
                                   "unset take the head's recommended settings.")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    add_training_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from unimargin import distributed as udist
    from unimargin.train import shutdown_distributed, train

    cfg = config_from_args(args)
    try:
        summary = train(cfg)
        main_process = udist.is_main_process()
    finally:
        shutdown_distributed()
    if main_process:
        print(json.dumps({k: summary[k] for k in ("status", "message", "epochs_completed", "out")}))
    return EXIT_OK if summary["status"] == "completed" else EXIT_DIVERGED
