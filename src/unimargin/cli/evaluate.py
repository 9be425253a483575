"""``unimargin evaluate``: the metrics of a checkpoint on one split of its run, through THE
evaluation (:func:`unimargin.metrics.evaluate.evaluate_model`), so the flat keys are those
the run recorded in ``summary.json["final"]`` (``uni_deployed`` at t* of the validation
split; ``verif_*`` / ``reject_*`` of every rejection score with held-out classes,
thresholds chosen on validation), plus the per-class accuracy, the confusion matrix with
class names and the worst confused pairs. Prints tables; ``--json`` prints the JSON."""

from __future__ import annotations

import json

from .common import EXIT_OK, load_split

# the confusion matrix is printed as a table up to this many classes (all of it in --json)
MAX_PRINTED_CLASSES = 20


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained checkpoint",
                       description="Evaluate a checkpoint on its run's test split (or val / "
                                   "train) and print the metrics (SPEC §3), per-class accuracy, "
                                   "the confusion matrix and the worst confused pairs; with "
                                   "held-out classes, rejection AUROC and open-set accuracy for "
                                   "each rejection score (thresholds chosen on validation). "
                                   "--json prints the same as JSON.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run directory or checkpoint file")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--data-dir", help="override the run's dataset directory")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print the result as JSON (machine-readable)")
    p.add_argument("--out", metavar="FILE.json", help="also write the result JSON here")
    p.set_defaults(func=run)


def evaluate_checkpoint(checkpoint: str, split: str = "test", data_dir: str | None = None,
                        batch_size: int = 256) -> dict:
    """``{"checkpoint", "epoch", "head", "split", "metrics", "per_class"}`` of one run.

    ``metrics``: the flat keys; ``uni_deployed`` / ``val_t_star`` use t* of the validation
    split (as the engine records them), the open-set keys (with held-out classes) choose
    every threshold on validation and use the class means stored with the model.
    ``per_class``: ``classes`` (names), ``accuracy``, ``confusion`` (K × (K+1), last column
    rejected: always 0 here, closed set), ``worst_confused`` ([true, predicted, count]).
    """
    from unimargin.deploy.calibrate import run_class_means
    from unimargin.metrics import uniform_accuracy
    from unimargin.metrics.evaluate import compute_outputs, evaluate_model
    from unimargin.train import load_run

    run = load_run(checkpoint)
    splits = load_split(run, data_dir)
    data = {"test": (splits.x_test, splits.y_test), "train": (splits.x_train, splits.y_train),
            "val": (splits.x_val, splits.y_val)}
    x, y = data[split]
    if x is None or len(x) == 0:
        raise ValueError(f"--split {split}: the run has no {split} split")
    has_val = splits.x_val is not None and len(splits.x_val) > 0
    deployed = None
    if has_val:
        _, val_scores = compute_outputs(run.model, run.head, splits.x_val, batch_size)
        deployed = float(uniform_accuracy(val_scores, splits.y_val).threshold)
    unknown = splits.x_unknown is not None and len(splits.x_unknown) > 0
    means = (run_class_means(run, lambda: (splits.x_train, splits.y_train, None, None, splits))
             if unknown else None)
    metrics = evaluate_model(run.model, run.head, x, y, x_unknown=splits.x_unknown,
                             y_unknown=splits.y_unknown, deployed_threshold=deployed,
                             batch_size=batch_size, per_class=True,
                             x_val=splits.x_val if has_val else None,
                             y_val=splits.y_val if has_val else None, class_means=means)
    per_class = {"classes": [str(c) for c in run.classes], **metrics.pop("per_class")}
    return {"checkpoint": run.path, "epoch": run.epoch, "head": run.config.head, "split": split,
            "metrics": metrics, "per_class": per_class}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v, fmt=".4f") -> str:
    return "-" if v is None else format(v, fmt)


def format_report(result: dict) -> str:
    """The tables ``evaluate`` prints (everything of the JSON but the geometry keys)."""
    from unimargin.metrics.keys import rejection_key
    from unimargin.metrics.rejection import REJECTION_SCORES

    m, pc = result["metrics"], result["per_class"]
    names = pc["classes"]
    lines = [f"{result['checkpoint']} (head {result['head']}, epoch {result['epoch']}), "
             f"{result['split']} split, {m['n']} samples",
             f"  SW {_pct(m['sw'])}   CW {_pct(m['cw'])}   Uni {_pct(m['uni'])} (t* = "
             f"{_num(m['t_star'], '.4g')}, fitted on this split)"]
    if m.get("uni_deployed") is not None:
        lines.append(f"  deployed Uni {_pct(m['uni_deployed'])} (at t* of the validation split "
                     f"= {_num(m['val_t_star'], '.4g')})")
    if m.get("learned_threshold") is not None:
        lines.append(f"  Uni at the learned threshold {_num(m['learned_threshold'], '.4g')}: "
                     f"{_pct(m['uni_at_learned'])}")
    width = max(len("class"), *(len(c) for c in names))
    lines += ["", "per class:", f"  {'class':<{width}}  {'n':>6}  accuracy"]
    counts = [sum(row) for row in pc["confusion"]]
    for name, n, acc in zip(names, counts, pc["accuracy"]):
        lines.append(f"  {name:<{width}}  {n:>6}  {_pct(acc)}")
    k = len(names)
    if k <= MAX_PRINTED_CLASSES:
        cell = max(5, *(len(c) for c in names), len(str(max(counts or [0]))) + 1)
        lines += ["", "confusion matrix (rows: true class, columns: predicted):",
                  "  " + " " * width + "".join(f"{c:>{cell}}" for c in names)]
        for name, row in zip(names, pc["confusion"]):
            lines.append(f"  {name:<{width}}" + "".join(f"{v:>{cell}}" for v in row[:k]))
    else:
        lines.append(f"\nconfusion matrix: {k}×{k}, in --json")
    if pc["worst_confused"]:
        pairs = ", ".join(f"{names[t]} → {names[p]} ({n})" for t, p, n in pc["worst_confused"])
        lines.append(f"worst confused (true → predicted, count): {pairs}")
    if m.get("reject_auroc") is not None or "reject_n_unknown" in m:
        lines += ["", f"open set: {m.get('reject_n_unknown')} samples of held-out classes vs the "
                      f"{m.get('reject_n_known')} known {result['split']} samples",
                  f"  {'rejection score':<16} {'AUROC':>7} {'open-set acc':>13} "
                  f"{'known kept':>11} {'unknown rej.':>13}  threshold (chosen on validation)"]
        for score in REJECTION_SCORES:
            key = lambda f: rejection_key(f, score)  # noqa: E731
            if m.get(key("auroc")) is None:
                why = ("not defined for this head (SPEC §2.9)" if score == "energy"
                       else "no training class means")
                lines.append(f"  {score:<16} {'-':>7}  {why}")
                continue
            source = (f" ({m.get('reject_threshold_source')})" if score == "max_score"
                      else " (reject 5% of known validation)")
            lines.append(f"  {score:<16} {m[key('auroc')]:>7.4f} "
                         f"{_pct(m[key('open_set_accuracy')]):>13} "
                         f"{_pct(m[key('known_accept_rate')]):>11} "
                         f"{_pct(m[key('unknown_reject_rate')]):>13}  "
                         f"{_num(m[key('threshold')], '.4g')}{source}")
        if m.get("verif_available"):
            lines.append(f"  verification of unknown-class pairs: ROC AUC "
                         f"{_num(m.get('verif_roc_auc'))}, EER {_pct(m.get('verif_eer'))}")
    return "\n".join(lines)


def run(args) -> int:
    result = evaluate_checkpoint(args.checkpoint, args.split, args.data_dir, args.batch_size)
    text = json.dumps(result, indent=2)
    print(text if args.json else format_report(result))
    if args.out:
        from unimargin.io import atomic_write_bytes

        atomic_write_bytes((text + "\n").encode("utf-8"), args.out)
    return EXIT_OK
