"""Threshold calibration (SPEC §3.8) against brute-force scans and scipy."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from unimargin.deploy.calibrate import (Outcomes, betainc, calibrate_run, clopper_pearson,
                                        figures, load_calibration, outcomes, parse_objective,
                                        select_threshold)
from unimargin.metrics import uniform_accuracy

scipy_stats = pytest.importorskip("scipy.stats")


# ----------------------------------------------------------------- brute-force references
def _all_midpoints(values):
    v = sorted(set(float(x) for x in values if math.isfinite(x)))
    return [v[0] - 1.0] + [0.5 * (a + b) for a, b in zip(v, v[1:])] + [v[-1] + 1.0]


def _far(t, out):
    if out.unknown is not None:
        return sum(1 for r in out.unknown.tolist() if r > t) / len(out.unknown)
    return sum(1 for n in out.n.tolist() if n >= t) / len(out.n)


def _frr(t, out):
    return sum(1 for p in out.p.tolist() if p <= t) / len(out.p)


def _random_outcomes(seed, n=60, k=4, unknown=False, ties=False):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, k, generator=g)
    if ties:
        s = torch.round(s * 2) / 2  # many exact ties
    y = torch.randint(0, k, (n,), generator=g)
    s[torch.arange(n), y] += 1.0
    u = torch.randn(n // 2, k, generator=g) if unknown else None
    return outcomes("max_score", s, y, unknown_scores=u), s, y


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.1, 0.37, 1.0])
@pytest.mark.parametrize("unknown", [False, True])
def test_far_is_the_smallest_feasible_midpoint(seed, alpha, unknown):
    out, _, _ = _random_outcomes(seed, unknown=unknown, ties=seed % 2 == 1)
    t = select_threshold(f"far={alpha}", out)
    values = torch.cat([out.p, out.n] + ([out.unknown] if unknown else [])).tolist()
    cands = _all_midpoints(values)
    feasible = [c for c in cands if _far(c, out) <= alpha]
    assert t == pytest.approx(min(feasible), abs=1e-12)
    assert _far(t, out) <= alpha


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("beta", [0.0, 0.02, 0.1, 0.5, 1.0])
def test_frr_is_the_largest_feasible_midpoint(seed, beta):
    out, _, _ = _random_outcomes(seed, ties=seed % 2 == 0)
    t = select_threshold(f"frr={beta}", out)
    cands = _all_midpoints(torch.cat([out.p, out.n]).tolist())
    feasible = [c for c in cands if _frr(c, out) <= beta]
    assert t == pytest.approx(max(feasible), abs=1e-12)


def test_uni_uses_t_star_and_figures_match_loops():
    out, s, y = _random_outcomes(3)
    t_star = uniform_accuracy(s, y).threshold
    t = select_threshold("uni", out, t_star=t_star)
    assert t == t_star
    fig = figures(t, out)
    p, n = out.p.tolist(), out.n.tolist()
    assert fig["uni"]["value"] == pytest.approx(uniform_accuracy(s, y, threshold=t).uni_at_threshold)
    assert fig["frr"]["count"] == sum(pi <= t for pi in p)
    assert fig["far"]["count"] == sum(ni >= t for ni in n)
    assert fig["uni"]["count"] == sum(ni < t < pi for pi, ni in zip(p, n))
    # t* maximises Uni over every candidate
    best = max(sum(ni < c < pi for pi, ni in zip(p, n)) for c in _all_midpoints(p + n))
    assert fig["uni"]["count"] == best


def test_generic_score_outcomes_and_unreachable_frr():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    y = torch.tensor([0, 0, 0])  # the second sample is misclassified
    out = outcomes("energy", s, y)
    r = torch.logsumexp(s.double(), 1)
    assert out.p[0] == r[0] and out.p[1] == -math.inf and out.n[1] == r[1]
    assert out.n[0] == -math.inf
    with pytest.raises(ValueError, match="not reachable"):
        select_threshold("frr=0.1", out)
    t = select_threshold("far=0", out)  # no misclassified sample may be accepted
    assert t > r[1] and figures(t, out)["far"]["count"] == 0


def test_parse_objective():
    assert parse_objective("uni") == ("uni", None)
    assert parse_objective(" FAR=1e-2 ") == ("far", 0.01)
    assert parse_objective("frr=0.05") == ("frr", 0.05)
    for bad in ("far", "far=2", "frr=-0.1", "frr=x", "best", "uni=1", 3):
        with pytest.raises(ValueError, match="objective"):
            parse_objective(bad)


# ----------------------------------------------------------------- Clopper–Pearson
@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (1, 1000),
                                 (57, 10000), (9990, 10000), (500, 1000), (2, 60000)])
def test_clopper_pearson_matches_scipy(k, n):
    lo, hi = clopper_pearson(k, n)
    ref_lo = 0.0 if k == 0 else scipy_stats.beta.ppf(0.025, k, n - k + 1)
    ref_hi = 1.0 if k == n else scipy_stats.beta.ppf(0.975, k + 1, n - k)
    assert lo == pytest.approx(ref_lo, rel=1e-9, abs=1e-14)
    assert hi == pytest.approx(ref_hi, rel=1e-9, abs=1e-14)


def test_betainc_matches_scipy():
    special = pytest.importorskip("scipy.special")
    for a, b in [(0.5, 0.5), (1, 1), (2.5, 7), (300, 20), (4000, 6000)]:
        for x in np.linspace(0.001, 0.999, 17):
            assert betainc(a, b, float(x)) == pytest.approx(float(special.betainc(a, b, x)),
                                                            rel=1e-9, abs=1e-13)


def test_clopper_pearson_bad_input():
    for k, n in [(-1, 5), (6, 5), (0, 0), (1.5, 3)]:
        with pytest.raises(ValueError, match="clopper_pearson"):
            clopper_pearson(k, n)


# ----------------------------------------------------------------- honesty (synthetic)
def test_far_calibrated_on_validation_holds_on_test():
    """Validation and test drawn from one distribution: the FAR chosen on validation must be
    close to the target on a large test set (the 95% interval contains the target)."""
    g = torch.Generator().manual_seed(7)

    def draw(n):
        y = torch.randint(0, 5, (n,), generator=g)
        s = torch.randn(n, 5, generator=g)
        s[torch.arange(n), y] += 2.5
        return outcomes("max_score", s, y)

    val, test = draw(20000), draw(20000)
    for alpha in (0.01, 0.05):
        t = select_threshold(f"far={alpha}", val)
        far = figures(t, test)["far"]
        lo, hi = far["ci95"]
        assert lo <= alpha <= hi, (alpha, far)
        assert figures(t, val)["far"]["value"] <= alpha


# ----------------------------------------------------------------- on a trained run
SMALL = dict(dataset="digits", limit_train=600, batch_size=64, feat_dim=16, quiet=True,
             num_threads=1, epochs=1)


@pytest.fixture(scope="module")
def bce_run(tmp_path_factory):
    from unimargin.train import TrainConfig, train

    out = str(tmp_path_factory.mktemp("cal") / "run")
    train(TrainConfig(head="bce-u", out=out, **SMALL))
    return out


def test_calibrate_run_writes_and_reloads(bce_run):
    res = calibrate_run(bce_run, "far=0.05")
    stored = load_calibration(bce_run)
    assert stored["threshold"] == res["threshold"]
    assert stored["objective"] == "far=0.05" and stored["rejection_score"] == "max_score"
    assert res["validation"]["far"]["value"] <= 0.05
    for key in ("far", "frr", "uni"):
        lo, hi = res["test"][key]["ci95"]
        assert lo <= res["test"][key]["value"] <= hi
    assert "learned" in res["candidates"] and "t_star_validation" in res["candidates"]
    assert res["candidates"]["learned"]["threshold"] == pytest.approx(
        float(__import__("unimargin").train.load_run(bce_run).head.threshold))
    assert os.path.basename(res["path"]) == "calibration.json"
    # same figures a brute-force recomputation from the stored test counts gives
    t = res["threshold"]
    uni = uniform_accuracy(*_test_scores(bce_run), threshold=t).uni_at_threshold
    assert res["test"]["uni"]["value"] == pytest.approx(uni)


def _test_scores(run_dir):
    from unimargin.metrics.evaluate import compute_outputs
    from unimargin.train import load_run, load_splits

    run = load_run(run_dir)
    splits = load_splits(run.config)
    _, s = compute_outputs(run.model, run.head, splits.x_test)
    return s, splits.y_test


def test_calibrate_run_uni_and_other_scores(bce_run):
    uni = calibrate_run(bce_run, "uni", write=False)
    assert uni["threshold"] == uni["candidates"]["t_star_validation"]["threshold"]
    with pytest.raises(ValueError, match="'uni' is defined"):
        calibrate_run(bce_run, "uni", rejection_score="energy", write=False)
    cc = calibrate_run(bce_run, "far=0.05", rejection_score="centroid_cosine", write=False)
    # the class means live in the checkpoint (one home), not in calibration.json
    assert -1.0 <= cc["threshold"] <= 2.0 and "class_means" not in cc
    assert "learned" not in cc["candidates"]


def test_load_calibration_missing_and_corrupt(tmp_path):
    assert load_calibration(tmp_path) is None
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(ValueError, match="calibration.json"):
        load_calibration(tmp_path)
    (tmp_path / "calibration.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(ValueError, match="not a unimargin calibration"):
        load_calibration(tmp_path)


def test_deployment_order_given_calibrated_learned_fitted(bce_run):
    from unimargin.deploy.calibrate import deployment, run_splits
    from unimargin.metrics.evaluate import compute_outputs
    from unimargin.metrics.rejection import rejection_score, threshold_for_reject_rate
    from unimargin.train import load_run

    stale = os.path.join(bce_run, "calibration.json")  # written by the tests above
    if os.path.exists(stale):
        os.unlink(stale)
    run = load_run(bce_run)
    b = float(run.head.threshold)
    assert deployment(run, threshold=0.25).threshold == 0.25
    learned = deployment(run)
    assert learned.threshold == pytest.approx(b) and "learned threshold of bce-u" in learned.source
    _, _, x_val, y_val, _ = run_splits(run)
    f, s = compute_outputs(run.model, run.head, x_val)
    fitted = deployment(run, fit=True)
    assert fitted.threshold == uniform_accuracy(s, y_val).threshold
    assert fitted.source == "t* (validation), --fit-threshold"
    cc = deployment(run, rejection_score="centroid_cosine")
    assert torch.equal(cc.class_means, run.class_means)  # the checkpoint's, not recomputed
    r = rejection_score("centroid_cosine", s, f, run.class_means)
    assert cc.threshold == threshold_for_reject_rate(r, 0.05)
    with pytest.raises(ValueError, match="softmax cross-entropy only"):
        deployment(run, rejection_score="energy")
    cal = calibrate_run(bce_run, "far=0.02")
    try:
        chosen = deployment(run)
        assert chosen.threshold == cal["threshold"] and chosen.source.startswith("calibrated")
        assert deployment(run, fit=True).threshold == fitted.threshold  # fit skips it
        with pytest.raises(ValueError, match="calibrated for rejection score 'max_score'"):
            deployment(run, rejection_score="centroid_cosine")
    finally:
        os.unlink(cal["path"])
    with pytest.raises(ValueError, match="finite"):
        deployment(run, threshold=float("inf"))
