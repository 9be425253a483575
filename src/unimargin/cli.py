"""The ``unimargin`` command: ``train``, ``evaluate``, ``predict`` (+ ``compare``, ``sweep``
registered by :mod:`unimargin.report.commands`). docs/cli.md.

Options come from flags and/or ``--config file.yaml``; flags override the file, the file
overrides the defaults. Bad input prints ``error: ...`` and exits with status 2; a run that
diverged exits with status 3 (its last good checkpoint is kept).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_DIVERGED = 3


# --------------------------------------------------------------------------- parsing helpers
def _csv_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _key_value(text: str) -> tuple[str, object]:
    """``name=value`` with the value typed like YAML (1e-3 -> float, true -> bool)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        import yaml

        value = yaml.safe_load(raw)
    except Exception:
        value = raw
    if isinstance(value, int) and not isinstance(value, bool) and "." in raw:
        value = float(value)
    return key.strip(), value


def _unknown_classes(text: str) -> list:
    # Class names or indices; unimargin.data resolves digit strings that are not names.
    return _csv_list(text)


# Flags of `unimargin train`: (flag, TrainConfig field, argparse kwargs).
_TRAIN_FLAGS = [
    ("--dataset", "dataset", dict(help="dataset name (default mnist1d); see docs/data.md")),
    ("--data-dir", "data_dir", dict(help="directory of the dataset files")),
    ("--unknown-classes", "unknown_classes", dict(type=_unknown_classes, metavar="A,B",
        help="classes held out of training (names or indices), for open-set metrics")),
    ("--limit-train", "limit_train", dict(type=int, metavar="N", help="use only the first N training samples")),
    ("--limit-test", "limit_test", dict(type=int, metavar="N", help="use only the first N test samples")),
    ("--no-normalize-input", "normalize_input", dict(action="store_const", const=False,
        help="do not standardise inputs with training-set channel statistics")),
    ("--augment", "augment", dict(action=argparse.BooleanOptionalAction,
        help="dataset's default augmentation (default: on where the dataset defines one)")),
    ("--model", "model", dict(help="backbone (default: the dataset's default model)")),
    ("--feat-dim", "feat_dim", dict(type=int, help="feature dimension d (default 64)")),
    ("--head", "head", dict(help="head: softmax, normface, cosface, arcface, center, lmdl, bce-u, bce-d")),
    ("--head-param", "head_params", dict(type=_key_value, action="append", metavar="NAME=VALUE",
        help="head hyper-parameter (repeatable), e.g. --head-param delta_d=3.0")),
    ("--sync-bn", "sync_bn", dict(action="store_const", const=True,
        help="SyncBatchNorm under torchrun (CUDA only)")),
    ("--epochs", "epochs", dict(type=int, help="number of epochs (default 10)")),
    ("--batch-size", "batch_size", dict(type=int, help="global batch size (default 128)")),
    ("--optimizer", "optimizer", dict(choices=["sgd", "adamw"], help="default: the head's recommended setting")),
    ("--lr", "lr", dict(type=float, help="base learning rate (default: the head's recommended setting)")),
    ("--momentum", "momentum", dict(type=float, help="SGD momentum / AdamW beta1")),
    ("--nesterov", "nesterov", dict(action=argparse.BooleanOptionalAction, help="Nesterov momentum (SGD)")),
    ("--weight-decay", "weight_decay", dict(type=float, help="weight decay (not applied to biases, norm layers, head.no_decay_parameters())")),
    ("--schedule", "schedule", dict(choices=["cosine", "multistep", "constant"], help="learning-rate schedule")),
    ("--milestones", "milestones", dict(type=_int_list, metavar="E1,E2", help="epochs where multistep multiplies lr by gamma")),
    ("--gamma", "gamma", dict(type=float, help="multistep factor (default 0.1)")),
    ("--warmup-epochs", "warmup_epochs", dict(type=float, help="linear warm-up length in epochs")),
    ("--grad-clip", "grad_clip", dict(type=float, metavar="NORM", help="clip the global gradient norm")),
    ("--bf16", "bf16", dict(action="store_const", const=True, help="bfloat16 autocast for the backbone (head in float32)")),
    ("--max-feature-norm", "max_feature_norm", dict(type=float, help="divergence guard: largest allowed feature norm (default 1e4)")),
    ("--max-score", "max_score", dict(type=float, help="divergence guard: largest allowed |score| (default 1e6)")),
    ("--seed", "seed", dict(type=int, help="random seed (default 0)")),
    ("--out", "out", dict(help="run directory (default runs/train)")),
    ("--resume", "resume", dict(action="store_const", const=True, help="continue the run in --out from its last checkpoint")),
    ("--overwrite", "overwrite", dict(action="store_const", const=True, help="replace a run already in --out")),
    ("--quiet", "quiet", dict(action="store_const", const=True, help="no progress output")),
    ("--device", "device", dict(choices=["auto", "cpu", "cuda"], help="default auto")),
    ("--eval-batch-size", "eval_batch_size", dict(type=int, help="batch size for evaluation (default 1024)")),
    ("--num-threads", "num_threads", dict(type=int, help="torch intra-op threads")),
]


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one head on one dataset",
                       description="Train a backbone + head; writes config.yaml, metrics.jsonl, "
                                   "summary.json and checkpoints/last.pt in --out. Runs unchanged "
                                   "under torchrun --nproc-per-node N. Optimiser options left "
                                   "unset take the head's recommended settings.")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    for flag, dest, kwargs in _TRAIN_FLAGS:
        p.add_argument(flag, dest=dest, default=None, **kwargs)
    p.set_defaults(func=cmd_train)


def _add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained checkpoint",
                       description="Evaluate a checkpoint on its run's test split and print the "
                                   "metrics as JSON (SPEC §3).")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run directory or checkpoint file")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--data-dir", help="override the run's dataset directory")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--out", metavar="FILE.json", help="also write the metrics JSON here")
    p.set_defaults(func=cmd_evaluate)


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict labels (with rejection) for new inputs",
                       description="Write CSV columns index,prediction,score (prediction -1 = "
                                   "rejected, score = max_k S[i,k]). Threshold (SPEC §2.9): the "
                                   "head's learned one (bce-u, bce-d) by default, else t* fitted on "
                                   "the run's held-out test split.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run directory or checkpoint file")
    p.add_argument("--input", required=True, metavar="FILE", help=".npz (array x), .npy or .pt tensor of raw inputs")
    p.add_argument("--out", required=True, metavar="FILE.csv")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, metavar="T", help="reject when max score <= T")
    g.add_argument("--fit-threshold", action="store_true", help="use t* fitted on the run's test split")
    g.add_argument("--closed-set", action="store_true", help="never reject (plain argmax)")
    p.add_argument("--data-dir", help="override the run's dataset directory (for --fit-threshold)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.set_defaults(func=cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    from unimargin import __version__

    parser = argparse.ArgumentParser(
        prog="unimargin",
        description="Train and compare classifiers with large-margin (LMDL) and unified-threshold "
                    "(BCE-u) heads.")
    parser.add_argument("--version", action="version", version=f"unimargin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_predict_parser(sub)
    try:
        from unimargin.report import commands as report_commands
    except ImportError:  # the report package's CLI module may not exist yet
        report_commands = None
    if report_commands is not None:
        report_commands.register(sub)
    return parser


# --------------------------------------------------------------------------- commands
def config_from_args(args) -> "TrainConfig":  # noqa: F821
    """defaults < --config file (or, with --resume, the run's config.yaml) < flags."""
    from unimargin.train import TrainConfig, load_yaml, merge

    flags = {dest: getattr(args, dest) for _, dest, _ in _TRAIN_FLAGS}
    if flags["head_params"] is not None:
        flags["head_params"] = dict(flags["head_params"])
    base: dict = {}
    source = "flags"
    if args.config:
        base = load_yaml(args.config)
        source = f"config file {args.config!r}"
    elif flags["resume"]:
        out = flags["out"] or TrainConfig.out
        saved = os.path.join(out, "config.yaml")
        if os.path.exists(saved):
            base = load_yaml(saved)
            source = f"config file {saved!r}"
    if "head_params" in base and flags["head_params"] is not None:
        flags["head_params"] = {**(base["head_params"] or {}), **flags["head_params"]}
    merged = merge(base, flags)
    return TrainConfig.from_dict(merged, source=source)


def cmd_train(args) -> int:
    from unimargin.train import train

    from unimargin import distributed as udist
    from unimargin.train import shutdown_distributed

    cfg = config_from_args(args)
    try:
        summary = train(cfg)
        main_process = udist.is_main_process()
    finally:
        shutdown_distributed()
    if main_process:
        print(json.dumps({k: summary[k] for k in ("status", "message", "epochs_completed", "out")}))
    return EXIT_OK if summary["status"] == "completed" else EXIT_DIVERGED


def _load_split(run, split: str, data_dir: str | None):
    import dataclasses

    from unimargin.train import load_splits

    cfg = dataclasses.replace(run.config, data_dir=data_dir or run.config.data_dir)
    splits = load_splits(cfg)
    if list(splits.classes) != list(run.classes):
        raise ValueError(f"the dataset's classes {splits.classes} differ from the checkpoint's "
                         f"{run.classes}")
    return splits


def cmd_evaluate(args) -> int:
    from unimargin.metrics.evaluate import evaluate_model
    from unimargin.train import load_run

    run = load_run(args.checkpoint)
    splits = _load_split(run, args.split, args.data_dir)
    x, y = (splits.x_test, splits.y_test) if args.split == "test" else (splits.x_train, splits.y_train)
    metrics = evaluate_model(run.model, run.head, x, y, x_unknown=splits.x_unknown,
                             y_unknown=splits.y_unknown, batch_size=args.batch_size)
    result = {"checkpoint": run.path, "epoch": run.epoch, "split": args.split, "metrics": metrics}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from unimargin.train import atomic_write_bytes

        atomic_write_bytes((text + "\n").encode("utf-8"), args.out)
    return EXIT_OK


def load_inputs(path: str, in_shape) -> "torch.Tensor":  # noqa: F821
    """Raw inputs from .npz (array ``x``), .npy or .pt (tensor, or dict with ``x``), as float32
    (N, *in_shape). A missing channel dim of a 1-channel input is added."""
    import numpy as np
    import torch

    if not os.path.isfile(path):
        raise ValueError(f"input file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "x" not in z.files:
                    raise ValueError(f"input file {path!r} has no array 'x' (arrays: {z.files})")
                x = torch.from_numpy(np.asarray(z["x"]))
        elif ext == ".npy":
            x = torch.from_numpy(np.load(path, allow_pickle=False))
        elif ext == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                if "x" not in obj:
                    raise ValueError(f"input file {path!r} holds a dict without key 'x'")
                obj = obj["x"]
            if not isinstance(obj, torch.Tensor):
                raise ValueError(f"input file {path!r} does not hold a tensor")
            x = obj
        else:
            raise ValueError(f"input file {path!r}: expected a .npz, .npy or .pt file")
    except ValueError as exc:
        if str(exc).startswith("input file"):
            raise
        raise ValueError(f"input file {path!r} cannot be read: {exc}") from exc
    except Exception as exc:
        raise ValueError(f"input file {path!r} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not (x.dtype.is_floating_point or x.dtype in (torch.uint8, torch.int8, torch.int16,
                                                        torch.int32, torch.int64)):
        raise ValueError(f"input file {path!r}: expected numeric data, got dtype {x.dtype}")
    x = x.float()
    in_shape = tuple(in_shape)
    if x.dim() == len(in_shape) and in_shape[0] == 1 and tuple(x.shape[1:]) == in_shape[1:]:
        x = x.unsqueeze(1)
    if tuple(x.shape[1:]) != in_shape:
        raise ValueError(f"input file {path!r}: expected samples of shape {in_shape} (array "
                         f"(N, {', '.join(map(str, in_shape))})), got array of shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"input file {path!r} contains NaN or Inf values")
    return x


def cmd_predict(args) -> int:
    import torch

    from unimargin.metrics import uniform_accuracy
    from unimargin.train import compute_outputs, load_run

    run = load_run(args.checkpoint)
    x = load_inputs(args.input, run.in_shape)
    if args.closed_set:
        threshold, source = float("-inf"), "closed set (no rejection)"
    elif args.threshold is not None:
        threshold, source = args.threshold, "--threshold"
    elif run.head.threshold is not None and not args.fit_threshold:
        threshold, source = float(run.head.threshold), "learned threshold of the head"
    else:
        splits = _load_split(run, "test", args.data_dir)
        _, test_scores = compute_outputs(run.model, run.head, splits.x_test, args.batch_size)
        threshold = uniform_accuracy(test_scores, splits.y_test).threshold
        source = "t* fitted on the run's test split"
    features, scores = compute_outputs(run.model, run.head, x, args.batch_size)
    with torch.no_grad():
        pred = run.head.predict(features, threshold=threshold)
        best = scores.max(dim=1).values if scores.shape[0] else scores.new_empty(0)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "prediction", "score"])
        for i, (p, s) in enumerate(zip(pred.tolist(), best.tolist())):
            w.writerow([i, p, repr(float(s))])
    os.replace(tmp, args.out)
    rejected = int((pred == -1).sum())
    print(f"wrote {len(pred)} predictions to {args.out} (threshold {threshold:.6g}: {source}; "
          f"{rejected} rejected)", file=sys.stderr)
    return EXIT_OK


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the ``unimargin`` command; returns the exit status (0 ok, 2 error, 3 diverged)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) and usage errors (2)
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
