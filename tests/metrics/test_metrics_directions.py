"""Each direction in the one vocabulary (unimargin.metrics.keys) is checked by making the data
better and checking the metric moves the declared way."""

import pytest
import torch

from unimargin.metrics import (HIGHER_IS_BETTER, KEYS, NO_DIRECTION, feature_geometry,
                               open_set_rejection, separability_auc, uniform_accuracy,
                               verification)
from unimargin.metrics.keys import flat_key

CHECKED: set[str] = set()
_REJECTION_FIELDS = {"auroc", "open_set_accuracy", "known_accept_rate", "unknown_reject_rate",
                     "n_known", "n_unknown"}
_VERIFICATION_FIELDS = set(verification(torch.randn(8, 3), torch.arange(8) % 2))
# Keys no metric function returns (training records, the engine's flat dict): their
# directions are definitions, checked for type only.
NOT_FROM_A_METRIC = {"loss", "runtime_s", "time_s", "train_time_s"}


def _flat(key: str) -> str:
    if key == "separability_auc":
        return "sep_auc"
    if key in _REJECTION_FIELDS:
        return flat_key("open_set_rejection", key)
    if key in _VERIFICATION_FIELDS:
        return flat_key("verification", key)
    return flat_key("uniform", key)


def _moves_the_declared_way(worse: dict, better: dict, keys):
    for key in keys:
        if worse[key] is None or better[key] is None:
            raise AssertionError(f"{key} missing")
        if HIGHER_IS_BETTER[_flat(key)]:
            assert better[key] > worse[key], (key, worse[key], better[key])
        else:
            assert better[key] < worse[key], (key, worse[key], better[key])
        CHECKED.add(_flat(key))


class _Head:
    def __init__(self, w):
        self.w = w

    def linear_decision(self):
        return self.w, torch.zeros(self.w.shape[0])


def _features(k=4, d=6, n_per=60, spread=1.0, sep=4.0, offset=0.0, radii=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.eye(k, d) * sep + offset            # offset: common direction, smaller angles
    y = torch.arange(k).repeat_interleave(n_per)
    scale = torch.full((k,), spread) if radii is None else torch.tensor(radii)
    noise = torch.randn(k * n_per, d, generator=g)
    return means[y] + scale[y, None] * noise, y


def test_compactness_directions():
    worse = feature_geometry(*_features(spread=1.0, offset=1.0))
    better = feature_geometry(*_features(spread=0.4, offset=1.0))   # shrink within-class spread
    _moves_the_declared_way(worse, better,
                            ["intra_class_distance", "intra_class_cosine", "compactness_ratio"])


def test_distinctiveness_directions():
    head = _Head(torch.eye(4, 6))
    worse = feature_geometry(*_features(sep=3.0, offset=2.0), head=head)
    better = feature_geometry(*_features(sep=6.0, offset=0.5), head=head)  # means apart, wider angles
    _moves_the_declared_way(worse, better, [
        "inter_class_distance_min", "inter_class_distance_mean", "inter_class_angle_min",
        "inter_class_angle_mean", "centroid_margin_min", "centroid_margin_mean"])


def test_uniformity_direction():
    worse = feature_geometry(*_features(radii=[0.3, 1.0, 2.0, 3.0]))
    better = feature_geometry(*_features(radii=[1.0, 1.2, 1.4, 1.6]))    # more equal radii
    _moves_the_declared_way(worse, better, ["uniformity"])


def _scores(margin, n=400, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, k, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    s[torch.arange(n), y] += margin
    return s, y


def test_uniform_directions():
    s_w, y = _scores(0.5)
    s_b, _ = _scores(2.0)                               # positives pushed above negatives
    worse = uniform_accuracy(s_w, y).to_dict()
    better = uniform_accuracy(s_b, y).to_dict()
    worse["separability_auc"] = separability_auc(s_w, y)
    better["separability_auc"] = separability_auc(s_b, y)
    _moves_the_declared_way(worse, better, ["sw", "cw", "uni", "separability_auc"])


def test_threshold_directions():
    s, y = _scores(1.5)
    t_star = uniform_accuracy(s, y).threshold
    worse = uniform_accuracy(s, y, threshold=t_star + 1.5).to_dict()
    better = uniform_accuracy(s, y, threshold=t_star + 0.2).to_dict()   # learned t closer to t*
    _moves_the_declared_way(worse, better, ["uni_at_threshold", "uni_loss", "threshold_distance",
                                            "threshold_distance_rel"])


def test_verification_directions():
    worse = verification(*_features(k=6, d=6, n_per=30, spread=2.0, offset=1.0))
    better = verification(*_features(k=6, d=6, n_per=30, spread=0.8, offset=1.0))
    _moves_the_declared_way(worse, better, ["roc_auc", "eer", "tar_at_far_1e-1",
                                            "tar_at_far_1e-2", "tar_at_far_1e-3", "pair_accuracy"])


def test_rejection_directions():
    ks, ky = _scores(2.0)
    g = torch.Generator().manual_seed(5)
    unknown = torch.randn(300, 5, generator=g)
    t = 1.0
    worse = open_set_rejection(ks, ky, unknown + 1.0, t)
    better = open_set_rejection(ks, ky, unknown - 0.5, t)   # unknowns score lower
    _moves_the_declared_way(worse, better, ["auroc", "open_set_accuracy", "unknown_reject_rate"])
    ks_b, _ = _scores(3.0)                                    # knowns score higher
    better_known = open_set_rejection(ks_b, ky, unknown + 1.0, t)
    _moves_the_declared_way(worse, better_known, ["known_accept_rate"])


def test_per_score_rejection_directions():
    """The suffixed keys of the other rejection scores (reject_auroc_energy, ...) are the
    same figures of another score: rejection_metrics on that score moves the declared way."""
    from unimargin.metrics.keys import rejection_key
    from unimargin.metrics.rejection import REJECTION_SCORES, rejection_metrics

    g = torch.Generator().manual_seed(6)
    known, unknown = torch.randn(200, generator=g) + 2.0, torch.randn(150, generator=g)
    correct = torch.ones(200, dtype=torch.bool)
    worse = rejection_metrics(known, correct, unknown + 1.0, 1.0)
    better = rejection_metrics(known, correct, unknown - 0.5, 1.0)
    better_known = rejection_metrics(known + 1.0, correct, unknown + 1.0, 1.0)
    for score in REJECTION_SCORES[1:]:
        for field, b in (("auroc", better), ("open_set_accuracy", better),
                         ("unknown_reject_rate", better), ("known_accept_rate", better_known)):
            key = rejection_key(field, score)
            assert HIGHER_IS_BETTER[key] is True and b[field] > worse[field], key
            CHECKED.add(key)


def test_deployed_uni_direction():
    # t* fitted on a validation split, applied to a better / worse separated test split
    from unimargin import build_head
    from unimargin.metrics.evaluate import evaluate_outputs

    head = build_head("softmax", 5, 6)
    s_val, y_val = _scores(2.0, seed=1)
    t_val = uniform_accuracy(s_val, y_val).threshold
    out = {}
    for name, margin in (("worse", 0.3), ("better", 2.0)):
        s, y = _scores(margin)
        out[name] = evaluate_outputs(torch.randn(len(y), 6), s, y, head, deployed_threshold=t_val)
    assert out["better"]["uni_deployed"] > out["worse"]["uni_deployed"]
    CHECKED.add("uni_deployed")


def test_every_direction_flag_is_checked_and_every_output_key_is_classified():
    for check in (test_deployed_uni_direction, test_compactness_directions, test_distinctiveness_directions,
                  test_uniformity_direction, test_uniform_directions, test_threshold_directions,
                  test_verification_directions, test_rejection_directions,
                  test_per_score_rejection_directions):
        check()
    assert set(HIGHER_IS_BETTER) - NOT_FROM_A_METRIC == CHECKED
    s, y = _scores(1.0)
    f, fy = _features()
    keys = set(uniform_accuracy(s, y, threshold=0.5).to_dict())
    keys |= set(feature_geometry(f, fy, head=_Head(torch.eye(4, 6))))
    keys |= set(verification(f, fy))
    keys |= set(open_set_rejection(s, y, s[:10], 0.5))
    assert not set(HIGHER_IS_BETTER) & NO_DIRECTION
    # class_thresholds (a list) and threshold_given (the input) are not recorded numbers.
    unclassified = {_flat(k) for k in keys} - set(KEYS) - {"class_thresholds", "threshold_given"}
    assert not unclassified, unclassified


@pytest.mark.parametrize("key", sorted(HIGHER_IS_BETTER))
def test_direction_values_are_bools(key):
    assert isinstance(HIGHER_IS_BETTER[key], bool)
