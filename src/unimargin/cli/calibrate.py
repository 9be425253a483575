"""``unimargin calibrate``: choose the deployed threshold of a run on its validation split
(SPEC §3.8; :func:`unimargin.deploy.calibrate.calibrate_run`), print the figures and store
them as ``RUN/calibration.json`` (used by ``export`` and ``predict`` by default)."""

from __future__ import annotations

from .common import EXIT_OK

_RATES = (("far", "FAR"), ("frr", "FRR"), ("uni", "Uni"), ("far_unknown", "FAR unknown"))


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="choose the deployed threshold on the validation split",
        description="Choose one threshold on the run's validation split, exactly (SPEC §3.8): "
                    "'uni' = t* (best uniform accuracy); 'far=A' = the smallest threshold whose "
                    "false-accept rate is <= A (on unknown-class data when --unknown-data is "
                    "given); 'frr=B' = the largest threshold whose false-reject rate is <= B. "
                    "Prints validation and test figures (95%% Clopper-Pearson intervals) and "
                    "stores RUN/calibration.json.")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run directory or checkpoint file")
    p.add_argument("--objective", required=True, metavar="uni|far=A|frr=B")
    p.add_argument("--rejection-score", default="max_score",
                   choices=["max_score", "centroid_cosine", "energy"],
                   help="score compared with the threshold (SPEC §2.9; default max_score)")
    p.add_argument("--unknown-data", metavar="held-out|FILE",
                   help="unknown-class samples: 'held-out' = the run's --unknown-classes (half "
                        "for choosing, half for the test figures), or inputs as predict reads "
                        "them (image folder or file, CSV, .npz/.npy/.pt; used for choosing)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.set_defaults(func=run)


def _cell(fig: dict | None) -> str:
    if fig is None:
        return "-"
    lo, hi = fig["ci95"]
    return f"{fig['value']:.4f} [{lo:.4f}, {hi:.4f}]"


def format_table(result: dict) -> str:
    """The readable summary ``calibrate`` prints."""
    rows = [("validation", result["validation"]), ("test", result["test"])]
    for name, cand in result.get("candidates", {}).items():
        label = {"learned": "learned b", "t_star_validation": "t* (val)"}.get(name, name)
        rows.append((f"{label} = {cand['threshold']:.6g}: validation", cand["validation"]))
        rows.append((f"{label} = {cand['threshold']:.6g}: test", cand["test"]))
    rates = [(k, h) for k, h in _RATES if any(k in fig for _, fig in rows)]
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"threshold {result['threshold']:.6g} ({result['source']}; rejection score "
             f"{result['rejection_score']})",
             "  " + " " * width + "".join(f"{h + ' [95% CI]':<28}" for _, h in rates) + "n"]
    for label, fig in rows:
        n = fig["frr"]["n"]
        lines.append("  " + f"{label:<{width}}" + "".join(f"{_cell(fig.get(k)):<28}" for k, _ in rates)
                     + str(n))
    oracle = result.get("test_oracle")
    if oracle:
        lines.append(f"test-optimal (oracle, never deployed): t* = {oracle['t_star']:.6g}, "
                     f"Uni = {oracle['uni']:.4f}")
    if result.get("path"):
        lines.append(f"stored in {result['path']}")
    return "\n".join(lines)


def run(args) -> int:
    from unimargin.deploy.calibrate import calibrate_run
    from unimargin.train import load_run

    unknown = args.unknown_data
    if unknown is not None and unknown != "held-out":
        from unimargin.data.inputs import read_inputs

        from .predict import run_preprocessing

        unknown = read_inputs(unknown, run_preprocessing(load_run(args.checkpoint))).x
    result = calibrate_run(args.checkpoint, args.objective, rejection_score=args.rejection_score,
                           unknown_data=unknown, batch_size=args.batch_size)
    print(format_table(result))
    return EXIT_OK
