"""``unimargin sweep``: one hyper-parameter of one head over several values × seeds."""

from __future__ import annotations

import sys

from ._grid import add_grid_options, gather, head_params_from, run_options


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="one hyper-parameter of one head over several values × seeds",
        description="Train HEAD with PARAM set to each value (× seeds) and write a table and plot of metrics vs value.",
    )
    p.add_argument("--head", type=str, required=True, help="head name, e.g. lmdl")
    p.add_argument("--param", type=str, required=True,
                   help="head hyper-parameter (e.g. delta_d) or training option (e.g. lr); "
                        "head.NAME / train.NAME when ambiguous")
    p.add_argument("--values", type=str, required=True, help="comma-separated values, e.g. 0.5,1.5,3,6")
    add_grid_options(p, "sweep")
    p.set_defaults(func=run)


def run(args) -> int:
    from unimargin.experiments import run_sweep
    from unimargin.report.sweep import write_sweep_report

    options, extras = gather(args, ("seeds",))
    yaml_params = options.get("head_params") or {}
    if isinstance(yaml_params, dict) and yaml_params and not all(isinstance(v, dict) for v in yaml_params.values()):
        options["head_params"] = {args.head: yaml_params}  # sweep YAML may give the head's params directly
    head_params = head_params_from(args, options)
    stray = sorted(set(head_params) - {args.head})
    if stray:
        raise ValueError(f"--head-param: given for head(s) {stray}, but the sweep trains only {args.head!r}")
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    result = run_sweep(head=args.head, param=args.param, values=args.values,
                       head_params=head_params.get(args.head, {}), log=log,
                       progress_bar=sys.stderr.isatty(),
                       **run_options(args, options, extras, default_seeds=3, default_out="runs/sweep"))
    md_path, html_path = write_sweep_report(result)
    print(f"[sweep] wrote {md_path} and {html_path} ({result.wall_time_s:.0f} s)", file=sys.stderr)
    return 0 if any(r.ok for r in result.records) else 1
