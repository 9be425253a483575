"""``unimargin predict``: labels with rejection (SPEC §2.9) for new inputs, as CSV.

Inputs are read the way the run's training data were (:func:`unimargin.data.inputs.
read_inputs` with the preprocessing saved in the checkpoint): a directory of images (class
sub-directories give labels), one image file, a CSV with the training feature columns
(label column optional), or .npz (``x``, optional ``y``) / .npy / .pt arrays.

Threshold (:func:`unimargin.deploy.calibrate.deployment`, printed with its reason):
``--threshold`` > the run's calibration.json > the head's learned threshold (bce-u, bce-d)
> fitted on the run's *validation* split (``--fit-threshold`` skips the first two). Never
the test split.

Output safety (docs/reliability.md): never overwrites an existing file without
``--overwrite``, never writes over its input or the checkpoint (even with ``--overwrite``),
refuses a directory as ``--out`` (no stray temporary file), and the threshold must be finite.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys

from .common import EXIT_OK

COLUMNS = ("id", "prediction", "class", "score", "accepted")


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict labels (with rejection) for new inputs",
                       description="Write CSV columns id,prediction,class,score,accepted "
                                   "(prediction -1 = rejected; score = the rejection score, "
                                   "SPEC §2.9). Threshold: --threshold, else the run's "
                                   "calibration.json, else the head's learned one (bce-u, "
                                   "bce-d), else fitted on the run's validation split.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run directory or checkpoint file")
    p.add_argument("--input", required=True, metavar="PATH",
                   help="a directory of images (class sub-directories = labels), an image file, "
                        "a CSV with the training columns (label column optional), or a "
                        ".npz (x, optional y) / .npy / .pt array")
    p.add_argument("--out", required=True, metavar="FILE.csv")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, metavar="T", help="reject when the rejection score <= T (finite)")
    g.add_argument("--fit-threshold", action="store_true",
                   help="fit the threshold on the run's validation split (max_score: t*; other "
                        "scores: reject 5%% of the known validation samples), ignoring "
                        "calibration.json and the learned threshold")
    g.add_argument("--closed-set", action="store_true", help="never reject (plain argmax)")
    p.add_argument("--rejection-score", choices=["max_score", "centroid_cosine", "energy"],
                   help="score compared with the threshold (default: the calibrated one, else max_score)")
    p.add_argument("--data-dir", help="override the run's dataset directory (to fit a threshold)")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=run)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def check_output_path(out: str, overwrite: bool, protected: dict[str, str]) -> None:
    """Refuse ``out`` when it is a directory, one of ``protected`` (label -> path: the input,
    the checkpoint) or inside a protected directory (an image folder being read), or an
    existing file without ``overwrite``."""
    if os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a directory; give a file name such as {os.path.join(out, 'predictions.csv')!r}")
    for label, path in protected.items():
        if not path or not os.path.exists(path):
            continue
        if _same_file(out, path) or (os.path.isdir(path) and _inside(out, path)):
            raise ValueError(f"--out {out!r} is the {label}; write the predictions to another file")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"--out {out!r} already exists; pass --overwrite to replace it")


def run_preprocessing(run) -> dict:
    """The preprocessing saved with the run; checkpoints written before it was saved only
    know the input shape and the class names (enough for array inputs)."""
    if run.preprocessing:
        return run.preprocessing
    return {"in_shape": list(run.in_shape), "classes": [str(c) for c in run.classes]}


def predictions_csv(ids, pred, score, classes) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i, p, s in zip(ids, pred.tolist(), score.tolist()):
        name = classes[p] if 0 <= p < len(classes) else ""
        writer.writerow([i, p, name, repr(float(s)), int(p >= 0)])
    return buffer.getvalue().encode("utf-8")


def run(args) -> int:
    import torch

    from unimargin.data.inputs import read_inputs
    from unimargin.deploy.calibrate import deployment, run_class_means
    from unimargin.io import atomic_write_bytes
    from unimargin.metrics.confusion import predictions
    from unimargin.metrics.evaluate import compute_outputs
    from unimargin.metrics.rejection import (check_score_for_head, needs_features,
                                             rejection_score)
    from unimargin.train import load_run

    if args.threshold is not None and not math.isfinite(args.threshold):
        raise ValueError(f"--threshold: expected a finite number, got {args.threshold!r}")
    protected = {"input": args.input, "checkpoint": args.checkpoint}
    check_output_path(args.out, args.overwrite, protected)
    run_ = load_run(args.checkpoint)
    protected["checkpoint"] = run_.path
    check_output_path(args.out, args.overwrite, protected)
    inputs = read_inputs(args.input, run_preprocessing(run_))
    if args.closed_set:
        name = args.rejection_score or "max_score"
        check_score_for_head(name, run_.head)
        means = run_class_means(run_) if needs_features(name) else None
        threshold, source = float("-inf"), "closed set (no rejection)"
    else:
        chosen = deployment(run_, rejection_score=args.rejection_score, threshold=args.threshold,
                            fit=args.fit_threshold, data_dir=args.data_dir,
                            batch_size=args.batch_size)
        name, means = chosen.rejection_score, chosen.class_means
        threshold, source = chosen.threshold, chosen.source
    features, scores = compute_outputs(run_.model, run_.head, inputs.x, args.batch_size)
    r = rejection_score(name, scores, features, means)
    arg = scores.argmax(dim=1) if scores.shape[0] else torch.empty(0, dtype=torch.long)
    pred = torch.where(r > threshold, arg, torch.full_like(arg, -1))
    classes = [str(c) for c in run_.classes]
    atomic_write_bytes(predictions_csv(inputs.ids, pred, r, classes), args.out)
    rejected = int((pred == -1).sum())
    shown = "-inf" if threshold == float("-inf") else f"{threshold:.6g}"
    print(f"wrote {len(pred)} predictions to {args.out}; rejection score {name}, threshold "
          f"{shown} ({source}); {rejected} rejected", file=sys.stderr)
    if inputs.labels is not None and len(pred):
        y = inputs.labels
        # top-1 accuracy as evaluate's sw (ties count wrong) and accuracy with rejection
        sw = float((predictions(scores, y) == y).double().mean())
        kept = float((pred == y).double().mean())
        print(f"labelled input: accuracy {100 * sw:.2f}% (top-1, {len(y)} samples); "
              f"{100 * kept:.2f}% correct and accepted at the threshold", file=sys.stderr)
    return EXIT_OK
