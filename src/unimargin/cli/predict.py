"""``unimargin predict``: labels with rejection (SPEC §2.9) for new inputs, as CSV.

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

from .common import EXIT_OK, load_split


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict labels (with rejection) for new inputs",
                       description="Write CSV columns index,prediction,class,score,accepted "
                                   "(prediction -1 = rejected, score = max_k S[i,k]). Threshold "
                                   "(SPEC §2.9): the head's learned one (bce-u, bce-d) by default, "
                                   "else t* fitted on the run's held-out test split.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run directory or checkpoint file")
    p.add_argument("--input", required=True, metavar="FILE", help=".npz (array x), .npy or .pt tensor of raw inputs")
    p.add_argument("--out", required=True, metavar="FILE.csv")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, metavar="T", help="reject when max score <= T (finite)")
    g.add_argument("--fit-threshold", action="store_true", help="use t* fitted on the run's test split")
    g.add_argument("--closed-set", action="store_true", help="never reject (plain argmax)")
    p.add_argument("--data-dir", help="override the run's dataset directory (for --fit-threshold)")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=run)


def load_inputs(path: str, in_shape):
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


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_output_path(out: str, overwrite: bool, protected: dict[str, str]) -> None:
    """Refuse ``out`` when it is a directory, one of ``protected`` (label -> path: the input,
    the checkpoint), or an existing file without ``overwrite``."""
    if os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a directory; give a file name such as {os.path.join(out, 'predictions.csv')!r}")
    for label, path in protected.items():
        if path and os.path.exists(path) and _same_file(out, path):
            raise ValueError(f"--out {out!r} is the {label}; write the predictions to another file")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"--out {out!r} already exists; pass --overwrite to replace it")


def run(args) -> int:
    import torch

    from unimargin.metrics import uniform_accuracy
    from unimargin.metrics.evaluate import compute_outputs
    from unimargin.train import atomic_write_bytes, load_run

    if args.threshold is not None and not math.isfinite(args.threshold):
        raise ValueError(f"--threshold: expected a finite number, got {args.threshold!r}")
    protected = {"input file": args.input, "checkpoint": args.checkpoint}
    check_output_path(args.out, args.overwrite, protected)
    run_ = load_run(args.checkpoint)
    protected["checkpoint"] = run_.path
    check_output_path(args.out, args.overwrite, protected)
    x = load_inputs(args.input, run_.in_shape)
    if args.closed_set:
        threshold, source = float("-inf"), "closed set (no rejection)"
    elif args.threshold is not None:
        threshold, source = args.threshold, "--threshold"
    elif run_.head.threshold is not None and not args.fit_threshold:
        threshold, source = float(run_.head.threshold), "learned threshold of the head"
    else:
        splits = load_split(run_, args.data_dir)
        _, test_scores = compute_outputs(run_.model, run_.head, splits.x_test, args.batch_size)
        threshold = uniform_accuracy(test_scores, splits.y_test).threshold
        source = "t* fitted on the run's test split"
    features, scores = compute_outputs(run_.model, run_.head, x, args.batch_size)
    with torch.no_grad():
        pred = run_.head.predict(features, threshold=threshold)
        best = scores.max(dim=1).values if scores.shape[0] else scores.new_empty(0)
    classes = [str(c) for c in run_.classes]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "prediction", "class", "score", "accepted"])
    for i, (p, s) in enumerate(zip(pred.tolist(), best.tolist())):
        name = classes[p] if 0 <= p < len(classes) else ("" if p < 0 else str(p))
        writer.writerow([i, p, name, repr(float(s)), int(p >= 0)])
    atomic_write_bytes(buffer.getvalue().encode("utf-8"), args.out)
    rejected = int((pred == -1).sum())
    print(f"wrote {len(pred)} predictions to {args.out} (threshold {threshold:.6g}: {source}; "
          f"{rejected} rejected)", file=sys.stderr)
    return EXIT_OK
