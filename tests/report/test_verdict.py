"""The SPEC §3.9 verdict on synthetic records: better/worse only with n >= 3, Holm p < 0.05
and non-identical Δ; degenerate cases print no t-test p of 0 and no significance claim."""

import re

import numpy as np
import pytest

from unimargin.report.compare import CompareResult, build_compare_document
from unimargin.report.records import RunRecord
from unimargin.report.stats import holm_adjust, paired_t_test
from unimargin.report.verdict import (BETTER, NO_DIFFERENCE, WORSE, call_difference, compare_heads,
                                      deployment_candidates, n_test_of, verdict_lines)


def _records(values: dict[str, list[float]], key="sw", extra=None):
    out = []
    for head, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            final = {key: value, "uni": value - 0.1, **((extra or {}).get(head, {}))}
            out.append(RunRecord(head, seed, "completed", final=final,
                                 splits={"n_train": 90, "n_val": 10, "n_test": 36}))
    return out


def _text(groups):
    return "\n".join(line for _, lines in groups for line in lines)


def test_identical_per_seed_differences_claim_nothing_and_print_no_t_p():
    # issue 13: one test sample of 36 (+2.78 points) on both seeds
    records = _records({"softmax": [0.50, 0.60], "lmdl": [0.50 + 1 / 36, 0.60 + 1 / 36]})
    (comparison,) = compare_heads(records, "sw", "softmax")
    assert comparison.test.zero_variance and comparison.test.t_p_value is None
    assert comparison.call == NO_DIFFERENCE and comparison.p_holm is None
    text = _text(verdict_lines(records, ["softmax", "lmdl"], "softmax"))
    assert "better" not in text and "worse" not in text
    printed = [float(v.rstrip(".,;)")) for v in re.findall(r"p = ([0-9.e+-]+)", text)]
    assert printed and all(v > 0 for v in printed), text  # never a p of 0
    assert "zero variance" in text and "sign-flip p = 0.5000" in text
    assert "+2.78 points" in text


@pytest.mark.parametrize("n", [2, 3, 5])
def test_identical_differences_never_significant_whatever_n(n):
    base = np.linspace(0.5, 0.7, n)
    records = _records({"softmax": base.tolist(), "lmdl": (base + 0.05).tolist()})
    (comparison,) = compare_heads(records, "sw", "softmax")
    assert comparison.call == NO_DIFFERENCE and "zero variance" in comparison.reason


def test_two_seeds_never_better_or_worse():
    # a huge, consistent but not identical gain: t p < 0.05 is possible with 2 seeds, still no claim
    records = _records({"softmax": [0.50, 0.60], "lmdl": [0.90, 0.99]})
    (comparison,) = compare_heads(records, "sw", "softmax")
    assert comparison.test.t_p_value < 0.05
    assert comparison.call == NO_DIFFERENCE and "at least 3" in comparison.reason
    assert "better" not in _text(verdict_lines(records, ["softmax", "lmdl"], "softmax"))


def test_better_and_worse_with_three_seeds_follow_direction_and_holm():
    records = _records({"softmax": [0.80, 0.82, 0.81], "lmdl": [0.90, 0.93, 0.91],
                        "bce-u": [0.70, 0.71, 0.715]})
    comparisons = {c.head: c for c in compare_heads(records, "sw", "softmax")}
    raw = [comparisons[h].test.t_p_value for h in ("lmdl", "bce-u")]
    assert [comparisons[h].p_holm for h in ("lmdl", "bce-u")] == pytest.approx(holm_adjust(raw))
    assert comparisons["lmdl"].call == BETTER and comparisons["bce-u"].call == WORSE
    # lower-is-better metric: a positive Δ is worse
    test = paired_t_test([0.3, 0.35, 0.32], [0.1, 0.12, 0.11])
    assert call_difference(test, 0.01, False)[0] == WORSE
    assert call_difference(test, 0.01, None)[0] == "higher"
    text = _text(verdict_lines(records, ["softmax", "lmdl", "bce-u"], "softmax"))
    assert "`lmdl` is **better** than `softmax`" in text and "`bce-u` is **worse** than `softmax`" in text
    assert "95% CI" in text


def test_holm_can_remove_a_claim_the_raw_p_would_make():
    rng = np.random.default_rng(0)
    base = [0.80, 0.81, 0.82, 0.83]
    # one head with raw p just below 0.05, four heads with large p: Holm multiplies by 5
    heads = {"softmax": base, "a": [b + d for b, d in zip(base, [0.010, 0.016, 0.004, 0.012])]}
    for name in "bcde":
        heads[name] = [b + float(rng.normal(0, 0.02)) for b in base]
    records = _records(heads)
    comparisons = {c.head: c for c in compare_heads(records, "sw", "softmax")}
    raw = comparisons["a"].test.t_p_value
    assert raw < 0.05 and comparisons["a"].p_holm >= 0.05
    assert comparisons["a"].call == NO_DIFFERENCE


def test_deployment_sentence_cost_and_candidates():
    extra = {"softmax": {"uni_deployed": None}, "bce-u": {}}
    records = []
    for seed in range(3):
        records.append(RunRecord("softmax", seed, "completed", final={
            "sw": 0.9, "uni": 0.80 + 0.01 * seed, "uni_deployed": 0.78 + 0.01 * seed + 0.001 * seed ** 2}))
        records.append(RunRecord("bce-u", seed, "completed", final={
            "sw": 0.9, "uni": 0.90 + 0.01 * seed, "uni_at_learned": 0.895 + 0.01 * seed - 0.001 * seed,
            "uni_deployed": 0.85 + 0.01 * seed}))
    assert deployment_candidates(records, "bce-u") == [("the learned threshold", "uni_at_learned"),
                                                       ("t* chosen on validation", "uni_deployed")]
    assert deployment_candidates(records, "softmax") == [("t* chosen on validation", "uni_deployed")]
    groups = dict(verdict_lines(records, ["softmax", "bce-u"], "softmax"))
    bce = groups["`bce-u` vs `softmax`"][2]
    # learned threshold: Uni(t*) − Uni(learned) = 0.5, 0.6, 0.7 points -> 0.60, deployable
    assert "the learned threshold gives" in bce and "0.60 points below" in bce and "**deployable as is**" in bce
    # validation t*: 5 points on every seed -> costs more than 1 point, same Δ on every seed
    assert "5.00 points below" in bce and "**costs more than 1 point**" in bce
    assert "Deployed Uni vs `softmax`'s" in bce
    assert "(baseline)" in groups["`softmax` (baseline)"][0]
    del extra


def test_old_records_without_deployed_uni_say_so():
    records = _records({"softmax": [0.8, 0.82, 0.81], "lmdl": [0.85, 0.86, 0.88]})
    text = _text(verdict_lines(records, ["softmax", "lmdl"], "softmax"))
    assert "not measured" in text and "predate" in text


def test_resolution_and_report_document(tmp_path):
    records = _records({"softmax": [0.50, 0.60], "lmdl": [0.50 + 1 / 36, 0.60 + 1 / 36]})
    assert n_test_of(records) == 36
    assert n_test_of([RunRecord("a", 0, "completed")], fallback=50) == 50
    result = CompareResult(dataset="toy", heads=["softmax", "lmdl"], seeds=[0, 1], epochs=1, records=records,
                           out=str(tmp_path), setup={"n_test": 36})
    markdown = build_compare_document(result).to_markdown(tmp_path)
    verdict = markdown.split("## Glossary")[0]
    assert "one sample = 2.78 points" in verdict
    assert "better" not in verdict.lower().replace("better or worse only", "") and "p = 0.0" not in verdict
    assert "(p < 0.05)" not in markdown


def test_sweep_verdict_applies_the_same_rule_per_value(tmp_path):
    from unimargin.report.sweep import SweepResult, build_sweep_document
    from unimargin.report.verdict import value_verdict_lines

    rng = np.random.default_rng(0)
    base = 0.6 + 0.01 * rng.standard_normal(5)
    noise = 0.002 * rng.standard_normal(5)
    per_value = {0.5: base, 1.5: base + 0.08 + noise, 3.0: base + 0.0005 * rng.standard_normal(5)}
    records = []
    for value, per_seed in per_value.items():
        for seed, v in enumerate(per_seed):
            records.append(RunRecord("lmdl", seed, "completed", final={"sw": float(v), "uni": float(v) - 0.2},
                                     splits={"n_test": 1000}, param_value=value))
    groups = dict(value_verdict_lines(records, "delta_d", [0.5, 1.5, 3.0], 0.5))
    assert set(groups) == {"`delta_d=1.5` vs `delta_d=0.5`", "`delta_d=3.0` vs `delta_d=0.5`"}
    assert "is **better** than" in groups["`delta_d=1.5` vs `delta_d=0.5`"][0]
    assert "no detectable difference" in groups["`delta_d=3.0` vs `delta_d=0.5`"][0]
    # the same numbers through compare's rule give the same calls (one rule, two reports)
    relabelled = [RunRecord(f"delta_d={r.param_value}", r.seed, r.status, final=r.final, splits=r.splits)
                  for r in records]
    calls = {c.head: c.call for c in compare_heads(relabelled, "sw", "delta_d=0.5")}
    assert calls == {"delta_d=1.5": BETTER, "delta_d=3.0": NO_DIFFERENCE}
    result = SweepResult(head="lmdl", param="delta_d", target="head", values=[0.5, 1.5, 3.0],
                         seeds=list(range(5)), epochs=1, dataset="mnist1d", records=records,
                         out=str(tmp_path))
    markdown = build_sweep_document(result, tmp_path).to_markdown(tmp_path)
    assert "## Verdict" in markdown and "`delta_d=1.5` is **better** than `delta_d=0.5`" in markdown
    assert markdown.index("## Verdict") < markdown.index("## Best value per metric")
    two_seeds = [r for r in records if r.seed < 2]
    assert all("**better**" not in s and "**worse**" not in s
               for _, lines in value_verdict_lines(two_seeds, "delta_d", [0.5, 1.5, 3.0], 0.5) for s in lines)
