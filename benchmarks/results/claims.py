"""The tables of docs/RESULTS.md, from the records of finished `unimargin compare` runs.

    python benchmarks/results/claims.py claims [RUNS_DIR]      # the claims table (top of RESULTS.md)
    python benchmarks/results/claims.py tables DIR [DIR ...]   # per-directory head and paired tables

Reads OUT/records.json of each compare directory (benchmarks/results/rerun_results.sh writes
them under runs/). Every call uses the report's own verdict code (unimargin.report.verdict,
SPEC §3.9): paired Δ over seeds, the 95 % t-interval, Holm over the heads compared with the
baseline on that metric, and the word *better* / *worse* / *no detectable difference*.
Nothing here chooses anything: it only reads test numbers that the runs already fixed.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from unimargin.report.labels import format_p
from unimargin.report.records import RunRecord, completed_runs, heads_in_order, read_records
from unimargin.report.stats import paired_t_test, summarize
from unimargin.report.verdict import (BETTER, DEPLOY_COST_OK, WORSE, Comparison, compare_heads,
                                      summary_for)

UNIFACE = "bce-u (normalized, s=16, m=0.35)"

# label -> (compare directories under RUNS_DIR, {directory: {head: new name}}, heads kept or None = all).
# The Holm family of a claim is the heads of its section compared with the same baseline, as in
# that compare's own report; the UniFace section pairs the normalized bce-u run (its own compare,
# same seeds and splits, the softmax runs reused) with softmax and cosface only.
SECTIONS: dict[str, tuple[list[str], dict[str, dict[str, str]], set[str] | None]] = {
    "MNIST-1D": (["mnist1d_tuned"], {}, None),
    "Fashion-MNIST": (["fashion_tuned"], {}, None),
    "Fashion-MNIST, UniFace form": (["fashion_uniface", "fashion_tuned"], {"fashion_uniface": {"bce-u": UNIFACE}},
                                    {"softmax", UNIFACE, "cosface"}),
    "MNIST 5k": (["mnist5k_tuned"], {}, None),
    "Fashion-MNIST, imbalance 0.1": (["fashion_imb0.1"], {}, None),
    "Fashion-MNIST, imbalance 0.01": (["fashion_imb0.01"], {}, None),
    "Fashion-MNIST, label noise 0.2": (["fashion_noise0.2"], {}, None),
    "MNIST-1D, LMDL recipe (shared SGD 0.001)": (["mnist1d_recipe_shared"], {}, None),
    "MNIST-1D, LMDL recipe, lr tuned": (["mnist1d_recipe_tuned"], {}, None),
    "MNIST-1D, recommended rates (no tuning)": (["mnist1d_default"], {}, None),
}


def section_records(runs_dir: Path, directories: list[str], renames: dict[str, dict[str, str]],
                    keep: set[str] | None = None) -> list[RunRecord]:
    """Records of the section's directories (heads in ``keep`` only, if given); a head seen in
    an earlier directory (the shared softmax baseline, identical runs) is not taken twice."""
    records: list[RunRecord] = []
    for name in directories:
        rename = renames.get(name, {})
        taken = {r.head for r in records}
        for record in read_records(runs_dir / name):
            head = rename.get(record.head, record.head)
            if head in taken or (keep is not None and head not in keep):
                continue
            records.append(replace(record, head=head))
    return records


def _points(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:+.2f}".replace("-", "−")


def _interval(test) -> str:
    if test.ci_low is None:
        return "—"
    return f"[{_points(test.ci_low)}, {_points(test.ci_high)}]"


def claim_row(claim: str, section: str, comparison: Comparison, holds_when: str) -> str:
    """One claims-table row. ``holds_when``: "better" (the claim says the head is better) or
    "not worse" (the claim says it is at least as good)."""
    test = comparison.test
    if test.n == 0:
        return f"| {claim} | {section} | — | — | 0 | not run | — |"
    wins = sum(d > 0 for d in test.differences)
    holds = (comparison.call == BETTER) if holds_when == "better" else (comparison.call != WORSE)
    verdict = comparison.call if comparison.call in (BETTER, WORSE) else "no detectable difference"
    return (f"| {claim} | {section} | {_points(test.mean_difference)} | {_interval(test)} | "
            f"{wins}/{test.n} | **{verdict}** (Holm p {format_p(comparison.p_holm)}) | "
            f"{'yes' if holds else 'no'} |")


def deploy_row(claim: str, section: str, records: list[RunRecord], head: str, key: str) -> str:
    """Uni at a deployable threshold minus Uni at the test-optimal t*: ``key`` is
    ``uni_at_learned`` (the head's learned bias, [BCE]'s claim) or ``uni_deployed`` (t* of the
    validation split); it deploys when the mean cost is within 1 point (DEPLOY_COST_OK)."""
    runs = [r for r in completed_runs(records) if r.head == head
            and r.value("uni") is not None and r.value(key) is not None]
    if not runs:
        return f"| {claim} | {section} | — | — | 0 | not run | — |"
    cost = paired_t_test([r.value("uni") for r in runs], [r.value(key) for r in runs])
    worst = max(cost.differences)
    ok = cost.mean_difference <= DEPLOY_COST_OK
    return (f"| {claim} | {section} | {_points(-cost.mean_difference)} | {_interval(_negated(cost))} | "
            f"worst seed {_points(-worst)} | **{'within 1 point' if ok else 'more than 1 point'}** | "
            f"{'yes' if ok else 'no'} |")


def _negated(test):
    if test.ci_low is None:
        return test
    return replace(test, ci_low=-test.ci_high, ci_high=-test.ci_low)


def claims_table(runs_dir: Path) -> str:
    lines = ["| claim | data / condition | Δ (points) | 95 % interval | seeds ahead | verdict (SPEC §3.9) | claim holds |",
             "| --- | --- | ---: | --- | --- | --- | --- |"]
    for section, (directories, renames, keep) in SECTIONS.items():
        if not all((runs_dir / d / "records.json").exists() for d in directories):
            lines.append(f"| (all claims) | {section} | — | — | — | not run yet | — |")
            continue
        records = section_records(runs_dir, directories, renames, keep)
        heads = heads_in_order(records)
        by_key = {key: {c.head: c for c in compare_heads(records, key, "softmax")} for key in ("sw", "uni")}
        if "lmdl" in heads:
            lines.append(claim_row("[LMDL] lmdl SW > softmax SW", section, by_key["sw"]["lmdl"], "better"))
        if "bce-u" in heads:
            lines.append(claim_row("[BCE] bce-u Uni > softmax Uni", section, by_key["uni"]["bce-u"], "better"))
            lines.append(claim_row("[BCE] bce-u SW ≥ softmax SW", section, by_key["sw"]["bce-u"], "not worse"))
            lines.append(deploy_row("[BCE] bce-u's learned threshold deploys: Uni(t_l) − Uni(t*)", section,
                                    records, "bce-u", "uni_at_learned"))
            lines.append(deploy_row("bce-u with t* of validation deploys: Uni(t*_val) − Uni(t*)", section,
                                    records, "bce-u", "uni_deployed"))
        if UNIFACE in heads:
            lines.append(claim_row("[UniFace] normalized bce-u Uni > softmax Uni", section, by_key["uni"][UNIFACE], "better"))
            lines.append(claim_row("[UniFace] normalized bce-u SW ≥ softmax SW", section, by_key["sw"][UNIFACE], "not worse"))
        if UNIFACE in heads and "cosface" in heads:
            for key, name in (("sw", "SW"), ("uni", "Uni")):
                [vs] = compare_heads(records, key, "cosface", [UNIFACE])
                lines.append(claim_row(f"[UniFace] normalized bce-u {name} > cosface {name}", section, vs, "better"))
            lines.append(deploy_row("[UniFace] its learned threshold deploys: Uni(t_l) − Uni(t*)", section,
                                    records, UNIFACE, "uni_at_learned"))
            lines.append(deploy_row("[UniFace] t* of validation deploys: Uni(t*_val) − Uni(t*)", section,
                                    records, UNIFACE, "uni_deployed"))
    return "\n".join(lines)


def head_table(records: list[RunRecord]) -> str:
    keys = [("sw", "SW %"), ("uni", "Uni %"), ("uni_deployed", "Uni(t*_val) %"), ("t_star", "t*"),
            ("learned_threshold", "t_l"), ("uni_at_learned", "Uni(t_l) %"), ("sep_auc", "sep AUC"), ("intra_class_cosine", "intra cos"),
            ("compactness_ratio", "intra/inter")]
    lines = ["| head | ok | " + " | ".join(label for _, label in keys) + " | s/run |",
             "|" + " --- |" * (len(keys) + 3)]
    for head in heads_in_order(records):
        cells = []
        for key, _ in keys:
            s = summary_for(records, head, key)
            scale, digits = (100.0, 2) if key in ("sw", "uni", "uni_deployed", "uni_at_learned") else (1.0, 3)
            cells.append("—" if s.mean is None else f"{scale * s.mean:.{digits}f} ± {scale * (s.std or 0):.{digits}f}")
        ok = [r for r in records if r.head == head and r.ok]
        runtime = summarize([r.runtime_s for r in ok]).mean or 0.0
        lines.append(f"| {head} | {len(ok)}/{sum(r.head == head for r in records)} | "
                     + " | ".join(cells) + f" | {runtime:.0f} |")
    return "\n".join(lines)


def paired_table(records: list[RunRecord], baseline: str = "softmax") -> str:
    lines = [f"| head vs {baseline} | metric | Δ (points) | 95 % interval | seeds ahead | Holm p | sign-flip p | verdict |",
             "| --- | --- | ---: | --- | --- | --- | --- | --- |"]
    for key in ("sw", "uni", "uni_deployed"):
        for c in compare_heads(records, key, baseline):
            t = c.test
            if t.n == 0:
                continue
            lines.append(f"| {c.head} | {key} | {_points(t.mean_difference)} | {_interval(t)} | "
                         f"{sum(d > 0 for d in t.differences)}/{t.n} | {format_p(c.p_holm)} | "
                         f"{format_p(t.sign_flip_p)} | {c.call} |")
    return "\n".join(lines)


def tail_table(records: list[RunRecord], tail: int = 3) -> str:
    """Per-class test accuracy of the last ``tail`` classes (the smallest under --imbalance:
    class c keeps n·ρ^(c/(K−1)) samples) and of the rest, mean ± std over seeds."""
    first = next((r.per_class for r in completed_runs(records) if r.per_class.get("accuracy")), None)
    if first is None:
        return ""
    names = [str(c) for c in first.get("classes") or range(len(first["accuracy"]))]
    k = len(names)
    lines = [f"| head | other classes ({names[0]}–{names[k - tail - 1]}) | " + " | ".join(names[k - tail:]) + " |",
             "| --- |" + " --- |" * (tail + 1)]
    for head in heads_in_order(records):
        per_seed = [r.per_class.get("accuracy") for r in completed_runs(records) if r.head == head]
        per_seed = [a for a in per_seed if a]
        if not per_seed:
            continue
        cols = [[sum(a[:k - tail]) / (k - tail) for a in per_seed]] + [[a[c] for a in per_seed] for c in range(k - tail, k)]
        cells = [f"{100 * summarize(v).mean:.1f} ± {100 * (summarize(v).std or 0):.1f}" for v in cols]
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("claims", "tables"):
        raise SystemExit(__doc__)
    if argv[0] == "claims":
        print(claims_table(Path(argv[1] if len(argv) > 1 else "runs")))
        return
    for directory in argv[1:]:
        records = read_records(directory)
        print(f"### {directory}\n\n{head_table(records)}\n\n{paired_table(records)}\n")
        if any(r.per_class for r in records):
            print(tail_table(records) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
