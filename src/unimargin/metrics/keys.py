"""The one metric vocabulary (SPEC §3): every number any layer records, with its direction.

A *flat key* is the name a number has in ``metrics.jsonl``, ``summary.json``, ``unimargin
evaluate``, the compare/sweep records and the report — the same name everywhere. The metric
functions return their own typed results (``UniformResult``, the dicts of
``feature_geometry``, ``verification`` and ``open_set_rejection``); :data:`RESULT_FIELDS`
and :data:`RESULT_PREFIX` are the one mapping from those fields to flat keys, used by
:mod:`unimargin.metrics.evaluate`.

Adding a metric: compute it in its functional module, give it one :class:`MetricKey` below,
and (if it comes from a result object) map its field here. Nothing else lists metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .rejection import REJECTION_SCORES

Direction = Literal["higher", "lower"] | None


@dataclass(frozen=True)
class MetricKey:
    """One recorded number: ``direction`` ("higher" / "lower" better, None = neither, e.g. a
    threshold or a count), ``unit`` ("%" = a fraction shown in percent, "deg", "score" = head
    score units, "feature" = feature-space units, "count", "s", "" = unitless ratio), a short
    ``label`` and a one-line ``description`` citing SPEC."""

    name: str
    direction: Direction
    unit: str
    label: str
    description: str


def _k(name, direction, unit, label, description) -> MetricKey:
    return MetricKey(name, direction, unit, label, description)


def rejection_key(field: str, score: str = "max_score") -> str:
    """Flat key of an unknown-class rejection figure of one rejection score (SPEC §2.9):
    ``reject_<field>`` for ``max_score`` (the keys recorded before the other scores
    existed), ``reject_<field>_<score>`` otherwise (``reject_auroc_energy``)."""
    return f"reject_{field}" if score == "max_score" else f"reject_{field}_{score}"


# The figures recorded per rejection score other than max_score (unimargin.metrics.evaluate.
# open_set_score_keys): field, direction, unit, label, description.
_PER_SCORE = (
    ("auroc", "higher", "", "rejection AUROC", "known-class test vs unknown-class samples, "
     "threshold-free, SPEC §3.7"),
    ("open_set_accuracy", "higher", "%", "open-set accuracy", "knowns correct and accepted + "
     "unknowns rejected, at the threshold that rejects 5% of the known validation samples"),
    ("known_accept_rate", "higher", "%", "known accept rate", "known test samples above that "
     "threshold"),
    ("unknown_reject_rate", "higher", "%", "unknown reject rate", "unknown samples at or below "
     "that threshold"),
    ("threshold", None, "score", "rejection threshold", "the largest threshold rejecting at most "
     "5% of the known validation samples (never the test split)"),
)

_ALL = [
    # closed set: uniform classification (SPEC §3.1–§3.5)
    _k("n", None, "count", "n", "number of evaluated samples"),
    _k("sw", "higher", "%", "SW", "sample-wise (top-1) accuracy, SPEC §3.1"),
    _k("cw", "higher", "%", "CW", "class-wise uniform accuracy: one threshold per class, SPEC §3.3"),
    _k("uni", "higher", "%", "Uni", "uniform accuracy at the optimal unified threshold t* of the "
       "same split, SPEC §3.2"),
    _k("t_star", None, "score", "t*", "optimal unified threshold of the evaluated split, SPEC §3.2"),
    _k("learned_threshold", None, "score", "learned threshold", "the head's learned unified "
       "threshold (bce-u: b, bce-d: 0), SPEC §3.4"),
    _k("uni_at_learned", "higher", "%", "Uni at learned threshold", "uniform accuracy at the "
       "learned threshold, SPEC §3.4"),
    _k("uni_loss_learned", "lower", "%", "Uni lost by the learned threshold", "Uni(t*) − "
       "Uni(learned threshold), SPEC §3.4"),
    _k("threshold_distance", "lower", "score", "|learned − t*|", "distance between the learned "
       "threshold and t*, SPEC §3.4"),
    _k("threshold_distance_rel", "lower", "", "|learned − t*| / spread", "that distance over the "
       "score spread (median p − median n), SPEC §3.4"),
    _k("sep_auc", "higher", "", "separability AUC", "AUC of all positive vs all negative class "
       "metrics under one global threshold, SPEC §3.5"),
    # thresholds chosen on validation, applied to test (SPEC §3.8–§3.9)
    _k("val_t_star", None, "score", "t* (validation)", "optimal unified threshold fitted on the "
       "validation split, SPEC §3.9"),
    _k("uni_deployed", "higher", "%", "deployed Uni", "uniform accuracy on this split at t* fitted "
       "on the validation split (what deploying one threshold gives), SPEC §3.9"),
    # feature geometry (SPEC §3.6)
    _k("intra_class_distance", "lower", "feature", "intra-class distance", "mean distance of a "
       "feature to its class mean, SPEC §3.6"),
    _k("intra_class_cosine", "higher", "", "intra-class cosine", "mean cosine of a feature to its "
       "class mean (compactness), SPEC §3.6"),
    _k("inter_class_distance_min", "higher", "feature", "min inter-class distance", "smallest "
       "distance between two class means, SPEC §3.6"),
    _k("inter_class_distance_mean", "higher", "feature", "mean inter-class distance", "mean "
       "distance between class means, SPEC §3.6"),
    _k("inter_class_angle_min", "higher", "deg", "min inter-class angle", "smallest angle between "
       "two class means, SPEC §3.6"),
    _k("inter_class_angle_mean", "higher", "deg", "mean inter-class angle", "mean angle between "
       "class means, SPEC §3.6"),
    _k("compactness_ratio", "lower", "", "compactness ratio", "mean intra distance / mean inter "
       "distance, SPEC §3.6"),
    _k("uniformity", "lower", "", "radius variation", "coefficient of variation of the per-class "
       "radii (0 = equal hyperspheres), SPEC §3.6"),
    _k("centroid_margin_min", "higher", "feature", "min centroid margin", "smallest distance of a "
       "class mean to its decision-region edge (linear heads), SPEC §3.6"),
    _k("centroid_margin_mean", "higher", "feature", "mean centroid margin", "mean of those "
       "distances, SPEC §3.6"),
    # open-set verification on held-out classes (SPEC §3.7)
    _k("verif_available", None, "", "verification available", "False when fewer than 2 unknown "
       "classes make genuine/impostor pairs impossible, SPEC §3.7"),
    _k("verif_roc_auc", "higher", "", "verification ROC AUC", "pairs of unknown-class features, "
       "cosine similarity, SPEC §3.7"),
    _k("verif_eer", "lower", "%", "verification EER", "equal error rate, SPEC §3.7"),
    _k("verif_tar_at_far_1e-1", "higher", "%", "TAR@FAR=1e-1", "true accept rate at 10% false "
       "accepts, SPEC §3.7"),
    _k("verif_tar_at_far_1e-2", "higher", "%", "TAR@FAR=1e-2", "true accept rate at 1% false "
       "accepts, SPEC §3.7"),
    _k("verif_tar_at_far_1e-3", "higher", "%", "TAR@FAR=1e-3", "true accept rate at 0.1% false "
       "accepts, SPEC §3.7"),
    _k("verif_pair_accuracy", "higher", "%", "pair accuracy", "best-threshold accuracy on "
       "genuine/impostor pairs, SPEC §3.7"),
    _k("verif_pair_threshold", None, "", "pair threshold", "cosine threshold of that accuracy"),
    _k("verif_n_genuine", None, "count", "genuine pairs", "number of genuine pairs used"),
    _k("verif_n_impostor", None, "count", "impostor pairs", "number of impostor pairs used"),
    _k("verif_max_pairs_used", None, "count", "pairs used", "pair budget of sampled verification"),
    _k("verif_sampled", None, "", "sampled", "True when pairs were sampled (above max_pairs)"),
    # unknown-class rejection (SPEC §2.9, §3.7)
    _k("reject_auroc", "higher", "", "rejection AUROC", "known-class vs unknown-class samples by "
       "the rejection score, SPEC §3.7"),
    _k("reject_open_set_accuracy", "higher", "%", "open-set accuracy", "knowns correct and "
       "accepted + unknowns rejected, SPEC §2.9"),
    _k("reject_known_accept_rate", "higher", "%", "known accept rate", "known samples above the "
       "threshold, SPEC §2.9"),
    _k("reject_unknown_reject_rate", "higher", "%", "unknown reject rate", "unknown samples at or "
       "below the threshold, SPEC §2.9"),
    _k("reject_n_known", None, "count", "known samples", "known-class samples evaluated"),
    _k("reject_n_unknown", None, "count", "unknown samples", "unknown-class samples evaluated"),
    _k("reject_threshold", None, "score", "rejection threshold", "threshold used for max-score "
       "rejection, chosen without the test split (learned, else t* of validation), SPEC §2.9"),
    _k("reject_threshold_source", None, "", "threshold source", "how the max-score rejection "
       "threshold was chosen (learned / t* of validation)"),
    *(_k(rejection_key(field, score), direction, unit, f"{label} ({score.replace('_', ' ')})",
         f"{description} — rejection score {score}, SPEC §2.9 (None when undefined: energy for "
         "heads without softmax logits, centroid_cosine without training class means)")
      for score in REJECTION_SCORES if score != "max_score"
      for field, direction, unit, label, description in _PER_SCORE),
    # nested (not a number): evaluate_model(..., per_class=True), unimargin.metrics.confusion
    _k("per_class", None, "", "per class", "nested entry: accuracy per class, confusion matrix "
       "(last column = rejected), worst confused pairs (issue 12)"),
    # training (per epoch)
    _k("loss", "lower", "", "loss", "training loss (sample-weighted mean over the epoch)"),
    _k("lr", None, "", "learning rate", "learning rate at the start of the epoch"),
    _k("runtime_s", "lower", "s", "runtime", "wall time of the run"),
    _k("epoch", None, "count", "epoch", "epoch number of a metrics.jsonl record (1-based)"),
    _k("epochs_completed", None, "count", "epochs", "epochs the run completed"),
    _k("time_s", "lower", "s", "epoch time", "wall time of the epoch (training + evaluation)"),
    _k("train_time_s", "lower", "s", "epoch training time", "wall time of the epoch's training "
       "steps only"),
]

KEYS: dict[str, MetricKey] = {k.name: k for k in _ALL}

# Result field -> flat key, for the typed results of the metric functions.
RESULT_FIELDS: dict[str, str] = {
    "threshold": "t_star",
    "uni_at_threshold": "uni_at_learned",
    "uni_loss": "uni_loss_learned",
    "threshold_distance": "threshold_distance",
    "threshold_distance_rel": "threshold_distance_rel",
}
# Flat-key prefix of each dict-returning metric family.
RESULT_PREFIX: dict[str, str] = {"verification": "verif_", "open_set_rejection": "reject_"}

# Record prefixes a flat key may carry ("val.sw", "test.uni", "train.terms.ce", "final.sw").
_SPLIT_PREFIXES = ("train.", "val.", "test.", "final.")


def _strip(key: str) -> str:
    for prefix in _SPLIT_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def describe(key: str) -> MetricKey:
    """The :class:`MetricKey` of a (possibly split-prefixed) flat key. Loss terms
    (``terms.<name>``) are lower-is-better losses. Unknown keys raise ValueError."""
    base = _strip(key)
    if base in KEYS:
        return KEYS[base]
    if base.startswith("terms.") and len(base) > len("terms."):
        term = base[len("terms."):]
        return MetricKey(base, "lower", "", f"loss term {term}", f"training loss term {term!r}")
    raise ValueError(f"unknown metric key {key!r}; known keys: {', '.join(KEYS)} "
                     "(optionally prefixed by train./val./test., or terms.<name>)")


def higher_is_better(key: str) -> bool | None:
    """True / False when a larger value of ``key`` is better / worse; None when neither
    (thresholds, counts) or the key is unknown."""
    try:
        direction = describe(key).direction
    except ValueError:
        return None
    return None if direction is None else direction == "higher"


def flat_key(family: str, field: str) -> str:
    """Flat key of ``field`` of a metric family's result (``verification``,
    ``open_set_rejection``, ``uniform``, ``geometry``)."""
    if family in RESULT_PREFIX:
        return RESULT_PREFIX[family] + field
    return RESULT_FIELDS.get(field, field)


# Derived views (not separate tables): direction of every key that has one.
HIGHER_IS_BETTER: dict[str, bool] = {k: v.direction == "higher" for k, v in KEYS.items()
                                     if v.direction is not None}
NO_DIRECTION: frozenset[str] = frozenset(k for k, v in KEYS.items() if v.direction is None)
