"""The verdict of a compare (SPEC §3.9): paired comparisons with the baseline, Holm-adjusted
over the heads on each metric, and the plain sentences at the top of the report.

The rule (SPEC §3.9). Δ_s = metric(head, s) − metric(baseline, s) over the n seeds where
both runs completed. A difference is called *better* or *worse* only when

- n ≥ 3 (:data:`MIN_SEEDS`),
- the Δ_s are not all identical (zero variance has no t-test, only the sign-flip p), and
- the Holm-adjusted two-sided paired-t p (the family = the heads compared with the
  baseline on that metric) is < 0.05 (:data:`ALPHA`);

otherwise it is *no detectable difference*. Every sentence gives the mean Δ and its 95 %
t-interval, so "no detectable difference" still says how large a difference the seeds
leave possible.

The three questions a practitioner asks, one sentence each per head (:func:`verdict_lines`):
top-1 accuracy (SW), single-threshold accuracy (Uni at the test-optimal t*), and whether the
threshold a deployment would use (the learned one for bce-u/bce-d, else t* of the
validation split: ``uni_deployed``) can be used as is and what it costs against t*.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from typing import Iterable, Sequence

from unimargin.metrics.keys import higher_is_better

from .labels import PERCENT_KEYS, format_delta, format_p, format_value, metric_name, glossary_anchor
from .records import RunRecord, completed_runs, heads_in_order
from .stats import PairedTest, Summary, holm_adjust, paired_t_test, summarize

__all__ = [
    "ALPHA",
    "MIN_SEEDS",
    "BETTER",
    "WORSE",
    "NO_DIFFERENCE",
    "DEPLOY_COST_OK",
    "Comparison",
    "summary_for",
    "paired_for",
    "call_difference",
    "compare_heads",
    "deployment_candidates",
    "n_test_of",
    "resolution_sentence",
    "verdict_lines",
]

ALPHA = 0.05
MIN_SEEDS = 3
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
# A deployed threshold within 1 point of Uni at the test-optimal t* "can be used as is"
# (docs/compare.md); below one test sample's worth the cost is not measurable anyway.
DEPLOY_COST_OK = 0.01


def summary_for(records: Iterable[RunRecord], head: str, key: str) -> Summary:
    """Mean ± std of ``key`` over the completed runs of ``head`` that report it."""
    values = [r.value(key) for r in completed_runs(records) if r.head == head]
    return summarize([v for v in values if v is not None])


def paired_for(records: Sequence[RunRecord], head: str, baseline: str, key: str,
               baseline_key: str | None = None) -> tuple[list[int], PairedTest]:
    """Paired test of ``head``'s ``key`` − ``baseline``'s ``baseline_key`` (default the same
    key) over the seeds where both completed and report the metric."""
    baseline_key = key if baseline_key is None else baseline_key
    by_seed_head = {r.seed: r.value(key) for r in completed_runs(records) if r.head == head}
    by_seed_base = {r.seed: r.value(baseline_key) for r in completed_runs(records) if r.head == baseline}
    seeds = sorted(s for s in by_seed_head
                   if s in by_seed_base and by_seed_head[s] is not None and by_seed_base[s] is not None)
    return seeds, paired_t_test([by_seed_head[s] for s in seeds], [by_seed_base[s] for s in seeds])


@dataclass(frozen=True)
class Comparison:
    """``head`` against ``baseline`` on ``key``: the paired test, its Holm-adjusted p and the
    SPEC §3.9 call (:data:`BETTER`, :data:`WORSE` or :data:`NO_DIFFERENCE`, or "higher" /
    "lower" for a metric without a direction) with the reason in words."""

    head: str
    baseline: str
    key: str
    seeds: tuple[int, ...]
    test: PairedTest
    p_holm: float | None
    call: str
    reason: str

    @property
    def decided(self) -> bool:
        return self.call != NO_DIFFERENCE


def call_difference(test: PairedTest, p_holm: float | None, direction: bool | None) -> tuple[str, str]:
    """SPEC §3.9: (call, reason). Better/worse only with n ≥ 3, not all Δ identical and
    Holm-adjusted p < 0.05; the reason says which condition failed."""
    n = test.n
    if n == 0:
        return NO_DIFFERENCE, "no seed where both runs completed"
    if test.zero_variance:
        return NO_DIFFERENCE, (f"the same Δ on all {n} seeds: zero variance, no t-test; "
                               f"sign-flip p = {format_p(test.sign_flip_p)}")
    if n < MIN_SEEDS:
        return NO_DIFFERENCE, f"only {n} paired seed{'s' if n != 1 else ''}; at least {MIN_SEEDS} are needed"
    if p_holm is None or p_holm >= ALPHA:
        return NO_DIFFERENCE, f"Holm-adjusted p = {format_p(p_holm)} over {n} seeds, not below {ALPHA}"
    higher = test.mean_difference > 0
    word = ("higher" if higher else "lower") if direction is None else (BETTER if higher == direction else WORSE)
    return word, f"Holm-adjusted p = {format_p(p_holm)} over {n} seeds"


def compare_heads(records: Sequence[RunRecord], key: str, baseline: str,
                  heads: Sequence[str] | None = None, baseline_key: str | None = None) -> list[Comparison]:
    """Every head (default: all but the baseline, in record order) against ``baseline`` on
    ``key``, Holm-adjusted over the heads with at least one paired seed."""
    heads = [h for h in (heads if heads is not None else heads_in_order(records)) if h != baseline]
    pairs = [(head, *paired_for(records, head, baseline, key, baseline_key)) for head in heads]
    family = [i for i, (_, _, test) in enumerate(pairs) if test.n > 0]
    adjusted = holm_adjust([pairs[i][2].t_p_value for i in family])
    p_holm = dict(zip(family, adjusted))
    direction = higher_is_better(key)
    out = []
    for index, (head, seeds, test) in enumerate(pairs):
        call, reason = call_difference(test, p_holm.get(index), direction)
        out.append(Comparison(head, baseline, key, tuple(seeds), test, p_holm.get(index), call, reason))
    return out


def deployment_candidates(records: Iterable[RunRecord], head: str) -> list[tuple[str, str]]:
    """The thresholds a deployment of ``head`` could use, as (description, key of Uni on test
    at that threshold): the head's learned threshold (``uni_at_learned``, bce-u/bce-d) and
    t* chosen on the validation split (``uni_deployed``, issue-13 records); only those the
    completed runs recorded. A ``deployed_threshold_source`` of "learned" means
    ``uni_deployed`` already is the learned threshold (listed once)."""
    runs = [r for r in completed_runs(records) if r.head == head]
    sources = {str(r.final.get("deployed_threshold_source")) for r in runs if r.final.get("deployed_threshold_source")}
    has = {key: any(r.value(key) is not None for r in runs) for key in ("uni_at_learned", "uni_deployed")}
    out = []
    if has["uni_at_learned"] and not (has["uni_deployed"] and sources == {"learned"}):
        out.append(("the learned threshold", "uni_at_learned"))
    if has["uni_deployed"]:
        out.append(("the learned threshold" if sources == {"learned"} else "t* chosen on validation",
                    "uni_deployed"))
    return out


def n_test_of(records: Iterable[RunRecord], fallback: int | None = None) -> int | None:
    """N_test of the runs (summary "splits"), else ``fallback`` (the experiment's setup)."""
    sizes = {int(r.splits["n_test"]) for r in records if r.splits.get("n_test")}
    if len(sizes) == 1:
        return sizes.pop()
    if sizes:  # --limit-test differs between runs: state the smallest (coarsest resolution)
        return min(sizes)
    return fallback


def resolution_sentence(n_test: int | None) -> str:
    if not n_test:
        return "The test-set size is not recorded, so its resolution is unknown."
    return (f"Test-set resolution: {n_test} test samples, so one sample = {100.0 / n_test:.3g} points "
            "of any accuracy; differences smaller than that are below what this test set can show.")


def _link(key: str) -> str:
    return f"[{metric_name(key)}](#{glossary_anchor(key)})"


def _mean(key: str, summary: Summary) -> str:
    if summary.mean is None:
        return "—"
    return format_value(key, summary.mean) + (" %" if key in PERCENT_KEYS else "")


def _signed(key: str, value: float) -> str:
    """+0.76 / −0.34 in display units without the unit word (inside intervals)."""
    return format_delta(key, value).replace(" points", "").replace("-", "−")


def _interval(key: str, test: PairedTest) -> str:
    if test.ci_low is None:
        return "one seed: no interval"
    if test.zero_variance:
        return "the same Δ on every seed"
    return f"95% CI {_signed(key, test.ci_low)} to {_signed(key, test.ci_high)}"


def _short_reason(comparison: Comparison) -> str:
    test = comparison.test
    if test.zero_variance:
        return f"zero variance, no t-test; sign-flip p = {format_p(test.sign_flip_p)}, {test.n} seeds"
    if test.n < MIN_SEEDS:
        return f"only {test.n} seed{'s' if test.n != 1 else ''}: at least {MIN_SEEDS} needed"
    return f"Holm p = {format_p(comparison.p_holm)}, {test.n} seeds"


def difference_sentence(question: str, comparison: Comparison, records: Sequence[RunRecord],
                         key: str) -> str:
    head, baseline, test = comparison.head, comparison.baseline, comparison.test
    if test.n == 0:
        return (f"**{question}** ({_link(key)}): `{head}` vs `{baseline}`: no comparison (no seed where "
                "both runs completed).")
    verb = {BETTER: "is **better** than", WORSE: "is **worse** than"}.get(comparison.call)
    relation = f"`{head}` {verb} `{baseline}`" if verb else f"`{head}` vs `{baseline}`: **{comparison.call}**"
    return (f"**{question}** ({_link(key)}): {relation}: {_mean(key, summary_for(records, head, key))} vs "
            f"{_mean(key, summary_for(records, baseline, key))}, Δ {_signed(key, test.mean_difference)} points "
            f"({_interval(key, test)}; {_short_reason(comparison)}).")


def _cost_clause(records: Sequence[RunRecord], head: str, what: str, key: str) -> str:
    """"<what> costs X points of Uni against the test-optimal t* (CI): <judgement>"."""
    runs = [r for r in completed_runs(records) if r.head == head
            and r.value("uni") is not None and r.value(key) is not None]
    cost = paired_t_test([r.value("uni") for r in runs], [r.value(key) for r in runs])
    if cost.n == 0:
        return f"{what}: not recorded"
    judgement = ("**deployable as is**" if cost.mean_difference <= DEPLOY_COST_OK
                 else "**costs more than 1 point**")
    return (f"{what} gives {_link(key)} {_mean(key, summary_for(runs, head, key))}, "
            f"{100.0 * cost.mean_difference:.2f} points below Uni at the test-optimal t* "
            f"({_interval('uni', cost)}): {judgement}")


def _deploy_sentence(records: Sequence[RunRecord], head: str, baseline: str,
                     comparison: Comparison | None) -> str:
    candidates = deployment_candidates(records, head)
    name = f"`{head}`" + (" (baseline)" if head == baseline else "")
    if not candidates:
        return (f"**Deploying one threshold**: {name}: not measured (these runs predate the validation "
                "protocol of issue 13; rerun them to get the deployed Uni).")
    text = f"**Deploying one threshold**: {name}: " + "; ".join(
        _cost_clause(records, head, what, key) for what, key in candidates)
    if comparison is not None and comparison.test.n > 0:
        text += (f". Deployed Uni vs `{baseline}`'s: **{comparison.call}**, Δ "
                 f"{_signed('uni_deployed', comparison.test.mean_difference)} points "
                 f"({_interval('uni_deployed', comparison.test)}; {_short_reason(comparison)})")
    return text + "."


def verdict_lines(records: Sequence[RunRecord], heads: Sequence[str], baseline: str) -> list[tuple[str, list[str]]]:
    """Per head against ``baseline`` (title, sentences): the SW sentence, the Uni sentence,
    the deployment sentence (SPEC §3.9 rule; deployed Uni compared with the baseline's, Holm
    over heads); then the baseline's own deployment sentence."""
    others = [h for h in heads if h != baseline]
    by_key = {key: {c.head: c for c in compare_heads(records, key, baseline, others)}
              for key in ("sw", "uni", "uni_deployed")}
    groups = []
    for head in others:
        groups.append((f"`{head}` vs `{baseline}`", [
            difference_sentence("Top-1 accuracy", by_key["sw"][head], records, "sw"),
            difference_sentence("Single-threshold accuracy", by_key["uni"][head], records, "uni"),
            _deploy_sentence(records, head, baseline, by_key["uni_deployed"][head])]))
    if any(r.head == baseline for r in completed_runs(records)):
        groups.append((f"`{baseline}` (baseline)", [_deploy_sentence(records, baseline, baseline, None)]))
    return groups


def value_verdict_lines(records: Sequence[RunRecord], param: str, values: Sequence,
                        baseline_value) -> list[tuple[str, list[str]]]:
    """The sweep's verdict: every swept value against ``baseline_value`` on SW and Uni, the
    same SPEC §3.9 rule as compare (paired by seed, Holm over the values)."""
    label = {repr(v): f"{param}={v}" for v in values}
    relabelled = [dataclasses.replace(r, head=label.get(repr(r.param_value), str(r.param_value)))
                  for r in records]
    baseline = label[repr(baseline_value)]
    others = [label[repr(v)] for v in values if repr(v) != repr(baseline_value)]
    by_key = {key: {c.head: c for c in compare_heads(relabelled, key, baseline, others)}
              for key in ("sw", "uni")}
    return [(f"`{head}` vs `{baseline}`", [
        difference_sentence("Top-1 accuracy", by_key["sw"][head], relabelled, "sw"),
        difference_sentence("Single-threshold accuracy", by_key["uni"][head], relabelled, "uni")])
        for head in others]
