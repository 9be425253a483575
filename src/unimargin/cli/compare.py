"""``unimargin compare``: A/B report of several heads × seeds (docs/compare.md)."""

from __future__ import annotations

import sys

from ._grid import add_grid_options, gather, head_params_from, run_options


def register(sub) -> None:
    from unimargin.experiments import DEFAULT_EPOCHS, DEFAULT_HEADS

    p = sub.add_parser(
        "compare",
        help="A/B report: several heads × seeds with the same budget",
        description=(
            "Train the same backbone with several heads over several seeds and write report.md / "
            "report.html (tables, paired tests against softmax, learned threshold vs t*, plots). "
            f"With no arguments: mnist1d, heads {','.join(DEFAULT_HEADS)}, 3 seeds, {DEFAULT_EPOCHS} epochs."
        ),
    )
    p.add_argument("--heads", type=str, default=None,
                   help=f"comma-separated heads or 'all' (default {','.join(DEFAULT_HEADS)})")
    add_grid_options(p, "compare")
    t = p.add_argument_group("tuning (docs/compare.md; needs unimargin[tune])")
    t.add_argument("--tune", type=str, default=None, metavar="P1,P2",
                   help="tune each head's lr (and/or weight_decay, or a head hyper-parameter such as "
                        "lmdl.delta_d; NAME=LOW:HIGH sets the range) on the first seed's validation split "
                        "before training every seed")
    t.add_argument("--trials", type=int, default=8, help="Optuna trials per head (default 8)")
    t.add_argument("--tune-epochs", type=int, default=None, help="epochs per trial (default: --epochs)")
    t.add_argument("--tune-metric", choices=["sw", "uni"], default="sw", help="validation metric maximised")
    p.set_defaults(func=run)


def run(args) -> int:
    from unimargin.experiments import DEFAULT_HEADS, DEFAULT_SEEDS, run_compare
    from unimargin.report.compare import write_compare_report

    options, extras = gather(args, ("heads", "seeds"))
    head_params = head_params_from(args, options)
    heads = args.heads or extras.get("heads") or ",".join(DEFAULT_HEADS)
    if isinstance(heads, list):
        heads = ",".join(heads)
    tune = None
    if args.tune:
        from unimargin.experiments.tune import parse_tune

        tune = parse_tune(args.tune, trials=args.trials, epochs=args.tune_epochs, metric=args.tune_metric)

    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    result = run_compare(heads=heads, head_params=head_params, log=log, tune=tune,
                         progress_bar=sys.stderr.isatty(),
                         **run_options(args, options, extras, default_seeds=DEFAULT_SEEDS,
                                       default_out="runs/compare"))
    md_path, html_path = write_compare_report(result)
    print(f"[compare] wrote {md_path} and {html_path} ({result.wall_time_s:.0f} s)", file=sys.stderr)
    return 0 if any(r.ok for r in result.records) else 1
