"""``unimargin evaluate``: the metrics of a checkpoint on its run's test (or train) split,
through THE evaluation (:func:`unimargin.metrics.evaluate.evaluate_model`), so the keys are
those ``compare`` records (``verif_*``, ``reject_*``; metrics/keys.py)."""

from __future__ import annotations

import json

from .common import EXIT_OK, load_split


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained checkpoint",
                       description="Evaluate a checkpoint on its run's test split and print the "
                                   "metrics as JSON (SPEC §3). With held-out classes the open-set "
                                   "metrics are included (verification is unavailable, not an "
                                   "error, with a single held-out class).")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run directory or checkpoint file")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--data-dir", help="override the run's dataset directory")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", metavar="FILE.json", help="also write the metrics JSON here")
    p.set_defaults(func=run)


def evaluate_checkpoint(checkpoint: str, split: str = "test", data_dir: str | None = None,
                        batch_size: int = 256) -> dict:
    """``{"checkpoint", "epoch", "split", "metrics"}`` of one run."""
    from unimargin.metrics.evaluate import evaluate_model
    from unimargin.train import load_run

    run = load_run(checkpoint)
    splits = load_split(run, data_dir)
    x, y = (splits.x_test, splits.y_test) if split == "test" else (splits.x_train, splits.y_train)
    metrics = evaluate_model(run.model, run.head, x, y, x_unknown=splits.x_unknown,
                             y_unknown=splits.y_unknown, batch_size=batch_size)
    return {"checkpoint": run.path, "epoch": run.epoch, "split": split, "metrics": metrics}


def run(args) -> int:
    result = evaluate_checkpoint(args.checkpoint, args.split, args.data_dir, args.batch_size)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from unimargin.train import atomic_write_bytes

        atomic_write_bytes((text + "\n").encode("utf-8"), args.out)
    return EXIT_OK
