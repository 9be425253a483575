"""``unimargin export``: one ONNX or torch.export graph from raw input to scores, label
(−1 = rejected) and rejection score (:func:`unimargin.deploy.export.export_run`)."""

from __future__ import annotations

import sys

from .common import EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write the model as one ONNX / torch.export graph",
        description="Write one graph from the raw model input (standardisation inside) to "
                    "scores (N,K), label (N, -1 = rejected) and rejection_score (N), dynamic "
                    "batch. Threshold: --threshold, else RUN/calibration.json, else the head's "
                    "learned threshold (bce-u, bce-d), else t* of the validation split. ONNX "
                    "needs the extra unimargin[export].")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run directory or checkpoint file")
    p.add_argument("--format", choices=["onnx", "pt2"], default="onnx")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    p.add_argument("--threshold", type=float, metavar="T", help="bake this threshold in")
    p.add_argument("--rejection-score", choices=["max_score", "centroid_cosine", "energy"],
                   help="default: the calibrated one, else max_score")
    p.set_defaults(func=run)


def run(args) -> int:
    from unimargin.deploy.export import export_run

    meta = export_run(args.checkpoint, args.format, args.out, threshold=args.threshold,
                      rejection_score=args.rejection_score, overwrite=args.overwrite)
    print(f"wrote {meta['path']} ({meta['format']}, head {meta['head']}): threshold "
          f"{float(meta['threshold']):.6g} ({meta['threshold_source']}), rejection score "
          f"{meta['rejection_score']}", file=sys.stderr)
    return EXIT_OK
