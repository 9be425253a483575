"""Which way each metric key improves (SPEC §3.6: every metric states its direction)."""

from __future__ import annotations

HIGHER_IS_BETTER: dict[str, bool] = {
    # uniform classification (SPEC §3.1–§3.5); aliases used by the engine's flat keys
    "sw": True,
    "cw": True,
    "uni": True,
    "uni_at_threshold": True,
    "uni_at_learned": True,
    "uni_loss": False,
    "uni_loss_learned": False,
    "threshold_distance": False,
    "threshold_distance_rel": False,
    "separability_auc": True,
    "sep_auc": True,
    # feature geometry (SPEC §3.6)
    "intra_class_distance": False,
    "intra_class_cosine": True,
    "inter_class_distance_min": True,
    "inter_class_distance_mean": True,
    "inter_class_angle_min": True,
    "inter_class_angle_mean": True,
    "compactness_ratio": False,
    "uniformity": False,
    "centroid_margin_min": True,
    "centroid_margin_mean": True,
    # open-set verification (SPEC §3.7)
    "roc_auc": True,
    "eer": False,
    "tar_at_far_1e-1": True,
    "tar_at_far_1e-2": True,
    "tar_at_far_1e-3": True,
    "pair_accuracy": True,
    # unknown-class rejection (SPEC §3.7)
    "auroc": True,
    "open_set_accuracy": True,
    "known_accept_rate": True,
    "unknown_reject_rate": True,
}

# Keys the metric functions return that are descriptions, not quality scores (thresholds,
# counts): they have no better direction.
NO_DIRECTION: frozenset[str] = frozenset({
    "threshold", "t_star", "threshold_given", "learned_threshold", "class_thresholds", "n",
    "pair_threshold", "n_genuine", "n_impostor", "n_known", "n_unknown", "max_pairs_used",
    "sampled",
})
