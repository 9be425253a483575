"""Threshold calibration: deploy one threshold chosen on validation data (SPEC §3.8).

Decision model. A deployed model accepts sample i with label argmax_k S[i, k] iff its
rejection score r_i > t, else outputs −1 (SPEC §2.9). Each known-class sample is described
by two numbers (p_i, n_i) such that

    false reject  FR_i(t) = 1[p_i ≤ t]   (the true class is not accepted)
    false accept  FA_i(t) = 1[n_i ≥ t]   (a wrong class is accepted)
    uniformly correct ⟺ n_i < t < p_i,  Uni(t) = 1 − mean_i 1[FR_i ∨ FA_i].

- ``max_score``: p_i = S[i, y_i], n_i = max_{k≠y_i} S[i, k] — SPEC §3.8 exactly (every
  class whose score exceeds t counts as accepted).
- other rejection scores (one number per sample, not per class): a correctly classified
  sample has p_i = r_i, n_i = −∞ (only rejection can go wrong); a misclassified one has
  p_i = −∞ (its true class is never output) and n_i = r_i (a wrong label is output iff it is
  accepted). ``uni`` is refused for them: with these definitions Uni(t) only falls as t
  grows, so "accept everything" would be optimal — use ``far=α`` with unknown-class data.
- unknown-class samples u: FAR_unknown(t) = mean_u 1[r_u > t].

Objectives (exact, by sorting; no grid): ``uni`` → t* of SPEC §3.2 on validation (one home:
:func:`unimargin.metrics.uniform_accuracy`); ``far=α`` → the smallest t with FAR_val(t) ≤ α
(FAR_unknown when unknown-class validation data is given); ``frr=β`` → the largest t with
FRR_val(t) ≤ β. All three rates are step functions that only change at the values p_i,
n_i, r_u; candidate thresholds are the midpoints between consecutive distinct values plus
one point below the lowest and one above the highest (value ∓ 1), as for t*. A threshold
therefore never sits on a sample's score, so a float32 recomputation (ONNX) cannot flip a
validation decision that was on the boundary. "Smallest"/"largest" t are among these
candidates: every t in the same open range gives identical validation figures.

Test figures at the chosen t carry 95% Clopper–Pearson intervals (:func:`clopper_pearson`,
exact binomial, pure Python: regularised incomplete beta by continued fraction, inverted
by bisection).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch

from unimargin.metrics import positive_negative, uniform_accuracy
from unimargin.metrics.rejection import (check_rejection_score, needs_features, rejection_score,
                                         threshold_candidates, threshold_for_accept_rate,
                                         threshold_for_reject_rate)

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "unimargin-calibration"
CALIBRATION_VERSION = 1
OBJECTIVES = ("uni", "far", "frr")


# --------------------------------------------------------------------------- intervals
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) = P(Beta(a, b) ≤ x), a, b > 0."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a > 0 and b > 0, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # the fraction converges fast for x < (a+1)/(a+b+2); use the symmetry I_x(a,b) = 1 − I_{1−x}(b,a)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile of Beta(a, b): the x with I_x(a, b) = q, by bisection (I is increasing in x)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile level must be in [0, 1], got {q}")
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for a binomial rate k/n.

    lower = Beta⁻¹(α/2; k, n−k+1) (0 when k = 0), upper = Beta⁻¹(1−α/2; k+1, n−k) (1 when
    k = n), α = 1 − confidence. Coverage ≥ confidence for every true rate.
    """
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"clopper_pearson needs integer counts, got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"clopper_pearson needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    lower = 0.0 if k == 0 else beta_ppf(alpha / 2, k, n - k + 1)
    upper = 1.0 if k == n else beta_ppf(1 - alpha / 2, k + 1, n - k)
    return lower, upper


# --------------------------------------------------------------------------- objectives
def parse_objective(text) -> tuple[str, float | None]:
    """``"uni"`` -> ("uni", None); ``"far=0.01"`` -> ("far", 0.01); ``"frr=0.05"`` ->
    ("frr", 0.05). The rate must be in [0, 1]."""
    if not isinstance(text, str):
        raise ValueError(f"objective must be a string (uni, far=ALPHA or frr=BETA), got {text!r}")
    name, sep, value = text.strip().partition("=")
    name = name.strip().lower()
    if name == "uni" and not sep:
        return "uni", None
    if name in ("far", "frr") and sep:
        try:
            rate = float(value)
        except ValueError:
            rate = float("nan")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"objective {text!r}: the rate must be a number in [0, 1], got {value!r}")
        return name, rate
    raise ValueError(f"objective must be 'uni', 'far=ALPHA' or 'frr=BETA' (e.g. far=0.01), got {text!r}")


@dataclass
class Outcomes:
    """Per-sample decision geometry of one split (see the module docstring): known-class
    samples (p, n) (float64, may hold −∞) and unknown-class rejection scores (or None)."""

    p: torch.Tensor
    n: torch.Tensor
    unknown: torch.Tensor | None = None


def outcomes(rejection: str, scores, labels, features=None, class_means=None,
             unknown_scores=None, unknown_features=None) -> Outcomes:
    """:class:`Outcomes` of known samples (scores S, labels) and, optionally, unknown ones."""
    check_rejection_score(rejection)
    p, n = positive_negative(scores, labels)
    p, n = p.to(torch.float64), n.to(torch.float64)
    if rejection != "max_score":
        r = rejection_score(rejection, scores, features, class_means)
        correct = p > n
        inf = torch.full_like(r, -math.inf)
        p, n = torch.where(correct, r, inf), torch.where(correct, inf, r)
    unknown = None
    if unknown_scores is not None:
        unknown = rejection_score(rejection, unknown_scores, unknown_features, class_means)
    return Outcomes(p, n, unknown)


def _candidates(out: Outcomes) -> torch.Tensor:
    """Every threshold that can change a validation figure (p, n and unknown scores)."""
    parts = [out.p, out.n] + ([out.unknown] if out.unknown is not None else [])
    return threshold_candidates(*parts)


def select_threshold(objective, out: Outcomes, t_star: float | None = None) -> float:
    """The threshold of ``objective`` (string or parsed tuple) on validation ``out``.

    ``uni`` needs ``t_star`` (t* of SPEC §3.2 on the same split, computed by the caller with
    :func:`unimargin.metrics.uniform_accuracy`). ``far=α`` uses FAR_unknown when
    ``out.unknown`` is given, else the known-class FAR. Raises ValueError when no candidate
    meets an ``frr`` target (possible only for scores other than max_score, whose FRR counts
    misclassified samples). The sorting itself is :mod:`unimargin.metrics.rejection`'s
    (shared with the open-set evaluation).
    """
    kind, rate = parse_objective(objective) if isinstance(objective, str) else objective
    if kind == "uni":
        if t_star is None:
            raise ValueError("objective 'uni' needs t_star (t* of the validation split)")
        return float(t_star)
    cand = _candidates(out)
    if kind == "far":
        # FAR falls as t grows: the last candidate is always feasible
        return threshold_for_accept_rate(out.unknown if out.unknown is not None else out.n,
                                         rate, cand)
    t = threshold_for_reject_rate(out.p, rate, cand)
    if t is None:
        lowest = float((out.p <= cand[0]).double().mean())
        raise ValueError(f"objective frr={rate:g} is not reachable on the validation split: even "
                         f"accepting every sample FRR = {lowest:.4f} (with this "
                         f"rejection score misclassified samples count as false rejects)")
    return t


def _rate(k: int, n: int) -> dict:
    lo, hi = clopper_pearson(k, n)
    return {"value": k / n, "count": k, "n": n, "ci95": [lo, hi]}


def figures(t: float, out: Outcomes) -> dict:
    """FAR, FRR, Uni at ``t`` (and FAR_unknown when unknown samples are present), each as
    {value, count, n, ci95} with the 95% Clopper–Pearson interval of the count."""
    fr = out.p <= t
    fa = out.n >= t
    n = out.p.numel()
    res = {"far": _rate(int(fa.sum()), n), "frr": _rate(int(fr.sum()), n),
           "uni": _rate(int((~(fr | fa)).sum()), n)}
    if out.unknown is not None and out.unknown.numel():
        res["far_unknown"] = _rate(int((out.unknown > t).sum()), out.unknown.numel())
    return res


# --------------------------------------------------------------------------- runs
def _t_star(scores, labels) -> float:
    return float(uniform_accuracy(scores, labels).threshold)


def run_splits(run, data_dir: str | None = None):
    """(x_train_fit, y_train_fit, x_val, y_val, splits) of a loaded run: the training
    samples the model was fitted on and the validation split, exactly as the engine made
    them (:func:`unimargin.train.load_splits`: the run's data options and seed, SPEC §3.9).
    ``data_dir`` overrides the run's dataset directory (the data moved)."""
    import dataclasses

    from unimargin.train import load_splits

    cfg = run.config if data_dir is None else dataclasses.replace(run.config, data_dir=data_dir)
    splits = load_splits(cfg)
    if run.classes and [str(c) for c in splits.classes] != [str(c) for c in run.classes]:
        raise ValueError(f"the dataset's classes {list(splits.classes)} differ from the "
                         f"checkpoint's {list(run.classes)}")
    if splits.x_val is None or splits.x_val.shape[0] == 0:
        raise ValueError(f"run {run.path!r} has no validation split (val_fraction="
                         f"{cfg.val_fraction!r}); thresholds are chosen on "
                         f"validation data only (SPEC §3.9): retrain with --val-fraction > 0")
    return splits.x_train, splits.y_train, splits.x_val, splits.y_val, splits


def _outputs(run, x, batch_size: int = 1024):
    from unimargin.metrics.evaluate import compute_outputs

    return compute_outputs(run.model, run.head, x, batch_size)


def training_class_means(run, x_fit: torch.Tensor, y_fit: torch.Tensor,
                         batch_size: int = 1024) -> torch.Tensor:
    """μ_k of the features of the training samples the model was fitted on (SPEC §2.9)."""
    from unimargin.metrics.rejection import class_means

    f, _ = _outputs(run, x_fit, batch_size)
    return class_means(f, y_fit, run.head.num_classes)


def run_class_means(run, splits=None, batch_size: int = 1024) -> torch.Tensor:
    """The training class means of a run (SPEC §2.9 ``centroid_cosine``): the ones stored in
    its checkpoint (``LoadedRun.class_means``); recomputed from the training split only for
    checkpoints written before they were stored. ``splits``: a callable returning
    :func:`run_splits` (called only when needed)."""
    if run.class_means is not None:
        return run.class_means.float()
    x_fit, y_fit, *_ = splits() if splits is not None else run_splits(run)
    return training_class_means(run, x_fit, y_fit, batch_size).float()


@dataclass
class Deployment:
    """The threshold a deployed model uses: value, why (``source``), the rejection score it
    applies to, and the training class means when that score needs them."""

    threshold: float
    source: str
    rejection_score: str
    class_means: torch.Tensor | None = None


def _lazy(fn):
    box = []

    def get():
        if not box:
            box.append(fn())
        return box[0]
    return get


def deployment(run, *, rejection_score: str | None = None, threshold: float | None = None,
               fit: bool = False, data_dir: str | None = None, splits=None,
               batch_size: int = 1024) -> Deployment:
    """The deployed threshold of a loaded run, in this order (SPEC §2.9, §3.8; never the
    test split):

    1. ``threshold`` (given by the user; must be finite);
    2. unless ``fit``: the run's ``calibration.json`` (:func:`load_calibration`);
    3. unless ``fit``, ``max_score`` only: the head's learned threshold (bce-u: b, bce-d: 0);
    4. fitted on the run's validation split: ``max_score`` → t* (SPEC §3.2); other scores →
       the largest threshold rejecting at most 5% of the known validation samples (the
       open-set evaluation's rule, :func:`unimargin.metrics.evaluate.rejection_threshold`).

    ``rejection_score`` defaults to the calibrated one, else ``max_score``; ``energy`` is
    refused for heads without softmax logits. ``splits``: a callable returning
    :func:`run_splits` (shared by callers that need the data anyway), default loaded lazily.
    """
    from unimargin.metrics.evaluate import SplitOutputs, rejection_threshold
    from unimargin.metrics.rejection import check_score_for_head
    from unimargin.metrics.rejection import rejection_score as rejection_score_fn

    get_splits = splits or _lazy(lambda: run_splits(run, data_dir))
    calibration = None if fit else load_calibration(run.path)
    if rejection_score is None:
        rejection_score = calibration["rejection_score"] if calibration else "max_score"
    check_rejection_score(rejection_score)
    check_score_for_head(rejection_score, run.head)
    means = run_class_means(run, get_splits, batch_size) if needs_features(rejection_score) else None
    if threshold is not None:
        t = float(threshold)
        if not math.isfinite(t):
            raise ValueError(f"threshold must be finite, got {threshold!r}")
        return Deployment(t, "given (threshold argument)", rejection_score, means)
    if calibration is not None:
        if calibration["rejection_score"] != rejection_score:
            raise ValueError(
                f"the run was calibrated for rejection score {calibration['rejection_score']!r}, "
                f"not {rejection_score!r}: calibrate it for {rejection_score!r}, pass a "
                f"threshold, or fit one on validation (--fit-threshold)")
        return Deployment(float(calibration["threshold"]), calibration["source"],
                          rejection_score, means)
    learned = run.head.threshold
    if not fit and rejection_score == "max_score" and learned is not None:
        return Deployment(float(learned.detach().float()), f"learned threshold of "
                          f"{run.config.head} (no calibration.json)", rejection_score, means)
    _, _, x_val, y_val, _ = get_splits()
    f, s = _outputs(run, x_val, batch_size)
    val = SplitOutputs(f, s, y_val)
    t, source = rejection_threshold(rejection_score, val, rejection_score_fn(rejection_score, s, f, means))
    why = "--fit-threshold" if fit else "no calibration.json"
    return Deployment(float(t), f"{source}, {why}", rejection_score, means)


def _split_half(y: torch.Tensor, seed: int):
    from unimargin.data import stratified_split_indices

    if y.numel() < 2:
        raise ValueError("unknown_data: at least 2 unknown-class samples are needed to split "
                         "them into a validation and a test half")
    counts = torch.bincount(y)
    if int(counts[counts > 0].min()) < 2:
        return torch.arange(0, y.numel(), 2), torch.arange(1, y.numel(), 2)
    a, b = stratified_split_indices(y.numpy(), 0.5, seed)
    return torch.as_tensor(a), torch.as_tensor(b)


def calibrate_run(run_dir, objective: str, rejection_score: str = "max_score",
                  unknown_data=None, *, write: bool = True, batch_size: int = 1024) -> dict:
    """Choose the deployed threshold of a trained run on its validation split (SPEC §3.8).

    - ``objective``: ``"uni"``, ``"far=α"`` or ``"frr=β"`` (see the module docstring).
    - ``rejection_score``: ``max_score`` | ``centroid_cosine`` | ``energy`` (SPEC §2.9).
    - ``unknown_data``: None; ``"held-out"`` = the run's held-out classes
      (``unknown_classes``), split in a stratified, seeded validation half (used to choose
      t for ``far``) and a test half (reported); or a tensor of raw unknown-class inputs
      (validation only).

    Returns (and with ``write`` stores atomically as ``RUN/calibration.json``) a dict with
    the threshold, its objective, source, rejection score, validation figures at t, test
    FAR/FRR/Uni at t with 95% Clopper–Pearson intervals, the learned threshold as one more
    candidate (heads with one, max_score only: it is in score units), and the oracle t* of
    the test split (for reference only: it is fitted on test data).
    """
    from unimargin.train import load_run

    kind, rate = parse_objective(objective)
    check_rejection_score(rejection_score)
    if kind == "uni" and rejection_score != "max_score":
        raise ValueError(f"objective 'uni' is defined on the per-class scores (max_score, SPEC "
                         f"§3.8); with rejection score {rejection_score!r} use far=ALPHA with "
                         f"unknown-class data or frr=BETA")
    run = load_run(run_dir)
    cfg = run.config
    from unimargin.metrics.rejection import check_score_for_head

    check_score_for_head(rejection_score, run.head)
    x_fit, y_fit, x_val, y_val, splits = run_splits(run)
    means = (run_class_means(run, lambda: (x_fit, y_fit), batch_size)
             if needs_features(rejection_score) else None)

    unknown_val = unknown_test = None
    if isinstance(unknown_data, str):
        if unknown_data != "held-out":
            raise ValueError(f"unknown_data must be None, 'held-out' or a tensor of inputs, "
                             f"got {unknown_data!r}")
        if splits.x_unknown is None:
            raise ValueError(f"unknown_data='held-out': run {os.fspath(run_dir)!r} holds no "
                             f"classes out (train it with --unknown-classes)")
        a, b = _split_half(splits.y_unknown, cfg.seed)
        unknown_val, unknown_test = splits.x_unknown[a], splits.x_unknown[b]
    elif unknown_data is not None:
        if not isinstance(unknown_data, torch.Tensor):
            raise ValueError(f"unknown_data must be None, 'held-out' or a tensor of inputs, "
                             f"got {type(unknown_data).__name__}")
        unknown_val = unknown_data

    def split_outcomes(x, y, x_unknown):
        f, s = _outputs(run, x, batch_size)
        uf = us = None
        if x_unknown is not None:
            uf, us = _outputs(run, x_unknown, batch_size)
        return outcomes(rejection_score, s, y, f, means, us, uf), s

    val, val_scores = split_outcomes(x_val, y_val, unknown_val)
    test, test_scores = split_outcomes(splits.x_test, splits.y_test, unknown_test)
    t_star_val = _t_star(val_scores, y_val) if rejection_score == "max_score" else None
    t = select_threshold((kind, rate), val, t_star=t_star_val)

    label = objective.strip().lower()
    on = "unknown-class validation data" if (kind == "far" and val.unknown is not None) else "validation"
    result = {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "threshold": t,
        "objective": label,
        "rejection_score": rejection_score,
        "source": f"calibrated: {label} on {on}",
        "epoch": run.epoch,
        "head": cfg.head,
        "n_val": int(y_val.numel()),
        "validation": figures(t, val),
        "test": figures(t, test),
        "candidates": {},
    }
    if rejection_score == "max_score":
        result["candidates"]["t_star_validation"] = {
            "threshold": t_star_val, "validation": figures(t_star_val, val),
            "test": figures(t_star_val, test)}
        learned = run.head.threshold
        if learned is not None:
            b = float(learned.detach().float())
            result["candidates"]["learned"] = {"threshold": b, "validation": figures(b, val),
                                               "test": figures(b, test)}
        oracle = uniform_accuracy(test_scores, splits.y_test)
        result["test_oracle"] = {"t_star": float(oracle.threshold), "uni": float(oracle.uni),
                                 "note": "fitted on the test split: a reference, never deployed"}
    if write:
        from unimargin.io import atomic_write_bytes

        path = os.path.join(_run_directory(run_dir), CALIBRATION_FILE)
        atomic_write_bytes((json.dumps(result, indent=2) + "\n").encode("utf-8"), path)
        result["path"] = path
    return result


def _run_directory(run_dir) -> str:
    """The run directory of a run directory or of its checkpoint file (RUN/checkpoints/x.pt)."""
    path = os.path.abspath(os.fspath(run_dir))
    if os.path.isdir(path):
        return path
    return os.path.dirname(os.path.dirname(path))


def load_calibration(run_dir) -> dict | None:
    """The stored ``calibration.json`` of a run (directory or checkpoint path), or None when
    the run was never calibrated. Raises ValueError naming the file when it is corrupt."""
    path = os.path.join(_run_directory(run_dir), CALIBRATION_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"calibration file {path!r} is unreadable or not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise ValueError(f"{path!r} is not a unimargin calibration file (no "
                         f"'{CALIBRATION_FORMAT}' tag)")
    if data.get("version") != CALIBRATION_VERSION:
        raise ValueError(f"calibration file {path!r} has version {data.get('version')!r}; this "
                         f"unimargin reads version {CALIBRATION_VERSION}")
    t = data.get("threshold")
    if not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"calibration file {path!r}: 'threshold' must be a finite number, got {t!r}")
    check_rejection_score(data.get("rejection_score"))
    return data


__all__ = ["CALIBRATION_FILE", "OBJECTIVES", "Outcomes", "outcomes", "parse_objective",
           "select_threshold", "figures", "clopper_pearson", "betainc", "beta_ppf",
           "calibrate_run", "load_calibration", "run_splits", "training_class_means",
           "run_class_means", "Deployment", "deployment"]
