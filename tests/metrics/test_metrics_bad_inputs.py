import numpy as np
import pytest
import torch

from unimargin.metrics import (FeatureGeometry, UniformAccuracy, centroid_margins,
                               feature_geometry, open_set_rejection, positive_negative,
                               separability_auc, uniform_accuracy, verification)

S = torch.randn(6, 3)
Y = torch.tensor([0, 1, 2, 0, 1, 2])
F = torch.randn(6, 4)


@pytest.mark.parametrize("fn", [uniform_accuracy, separability_auc, positive_negative])
def test_score_shape_and_label_errors(fn):
    with pytest.raises(ValueError, match=r"scores must be 2-D"):
        fn(torch.randn(6), Y)
    with pytest.raises(ValueError, match=r"scores must have at least 2 column"):
        fn(torch.randn(6, 1), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels has length 5 but scores has 6 rows"):
        fn(S, Y[:5])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        fn(S, torch.tensor([0, 1, 2, 3, 0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in"):
        fn(S, torch.tensor([0, -1, 2, 0, 1, 2]))
    with pytest.raises(TypeError, match=r"labels must be an integer tensor"):
        fn(S, Y.float())
    with pytest.raises(ValueError, match=r"labels must be 1-D"):
        fn(S, Y[:, None])
    with pytest.raises(ValueError, match=r"scores is empty"):
        fn(torch.empty(0, 3), torch.empty(0, dtype=torch.long))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_rejected(bad):
    s = S.clone()
    s[2, 1] = bad
    for fn in (uniform_accuracy, separability_auc):
        with pytest.raises(ValueError, match=r"scores must be finite"):
            fn(s, Y)
    with pytest.raises(ValueError, match=r"scores must be finite"):
        UniformAccuracy().update(s, Y)
    with pytest.raises(ValueError, match=r"unknown_scores must be finite"):
        open_set_rejection(S, Y, s, 0.0)
    f = F.clone()
    f[0, 0] = bad
    for fn in (feature_geometry, verification):
        with pytest.raises(ValueError, match=r"features must be finite"):
            fn(f, Y)


def test_overflowing_but_finite_scores_are_accepted():
    s = torch.full((4, 2), 3e38)                        # float32 sum overflows, values finite
    s[:, 1] = 1e38
    assert uniform_accuracy(s, torch.zeros(4, dtype=torch.long)).sw == 1.0


def test_feature_errors():
    with pytest.raises(ValueError, match=r"features must be 2-D"):
        feature_geometry(torch.randn(6), Y)
    with pytest.raises(ValueError, match=r"labels has length 5 but features has 6 rows"):
        feature_geometry(F, Y[:5])
    with pytest.raises(ValueError, match=r"at least 2 classes"):
        feature_geometry(F, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"features must be 2-D"):
        verification(torch.randn(2, 3, 4), Y[:2])
    with pytest.raises(ValueError, match=r"genuine and impostor pairs"):
        verification(F, torch.arange(6))                # every sample its own class
    with pytest.raises(ValueError, match=r"at least 2 samples"):
        verification(F[:1], Y[:1])
    with pytest.raises(ValueError, match=r"features must be 2-D"):
        FeatureGeometry().update(torch.randn(6), Y)
    with pytest.raises(ValueError, match=r"weight has 5 columns but features have dimension 4"):
        centroid_margins(F, Y, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        centroid_margins(F, Y, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"bias must have 3 entries"):
        centroid_margins(F, Y, torch.randn(3, 4), torch.randn(2))


def test_threshold_and_open_set_errors():
    with pytest.raises(ValueError, match=r"threshold must be finite"):
        uniform_accuracy(S, Y, threshold=float("nan"))
    with pytest.raises(ValueError, match=r"threshold must be a scalar"):
        uniform_accuracy(S, Y, threshold=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"unknown_scores has 4 columns but known_scores has 3"):
        open_set_rejection(S, Y, torch.randn(2, 4), 0.0)
    with pytest.raises(ValueError, match=r"threshold is required"):
        open_set_rejection(S, Y, S, None)
    with pytest.raises(ValueError, match=r"known_labels has length"):
        open_set_rejection(S, Y[:3], S, 0.0)


def test_numpy_inputs_work():
    res = uniform_accuracy(S.numpy(), Y.numpy())
    assert res == uniform_accuracy(S, Y)
    assert isinstance(res.sw, float) and isinstance(res.threshold, float)
    assert all(isinstance(v, float) for v in feature_geometry(np.asarray(F), Y).values())
