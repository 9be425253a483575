"""evaluate_outputs / compute_outputs against brute-force references; metric directions."""

import pytest
import torch
from torch import nn

from unimargin import build_head
from unimargin.metrics.evaluate import compute_outputs, evaluate_outputs
from unimargin.metrics.keys import higher_is_better
from unimargin.train.net import UnimarginNet


def _brute_uni_at(scores, labels, t):
    p = scores.gather(1, labels[:, None])[:, 0]
    masked = scores.clone()
    masked.scatter_(1, labels[:, None], float("-inf"))
    n = masked.max(dim=1).values
    return ((n < t) & (t < p)).double().mean().item()


def test_evaluate_outputs_learned_threshold_keys_match_brute_force():
    torch.manual_seed(1)
    head = build_head("bce-u", 4, 6)
    with torch.no_grad():
        head.bias.fill_(0.3)
    features = torch.randn(200, 6)
    labels = torch.randint(0, 4, (200,))
    with torch.no_grad():
        scores = head.scores(features)
    out = evaluate_outputs(features, scores, labels, head)
    assert out["learned_threshold"] == pytest.approx(0.3)
    assert out["uni_at_learned"] == pytest.approx(_brute_uni_at(scores, labels, 0.3), abs=1e-12)
    # Brute force over every candidate: midpoints between consecutive distinct p/n values.
    p = scores.gather(1, labels[:, None])[:, 0]
    n = scores.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
    v = torch.cat([p, n]).unique().double()
    cand = (v[1:] + v[:-1]) / 2
    counts = ((n.double()[None] < cand[:, None]) & (cand[:, None] < p.double()[None])).double().mean(1)
    assert out["uni"] == pytest.approx(counts.max().item(), abs=1e-12)
    assert out["uni_at_learned"] == pytest.approx(_brute_uni_at(scores, labels, out["t_star"]) -
                                                  out["uni_loss_learned"], abs=1e-12)
    assert out["threshold_distance"] == pytest.approx(abs(0.3 - out["t_star"]))
    assert out["n"] == 200


def test_evaluate_outputs_without_learned_threshold():
    head = build_head("softmax", 3, 5)
    f, y = torch.randn(50, 5), torch.arange(50) % 3
    out = evaluate_outputs(f, head.scores(f), y, head)
    for key in ("learned_threshold", "uni_at_learned", "uni_loss_learned", "threshold_distance"):
        assert out[key] is None
    assert "centroid_margin_min" in out and "intra_class_distance" in out


def test_compute_outputs_standardises_batches_and_restores_mode():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.BatchNorm1d(4))
    head = build_head("lmdl", 3, 4)
    mean, std = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5])
    net = UnimarginNet(backbone, head, mean, std).train()
    x = torch.randn(10, 2, 4)
    f, s = compute_outputs(net, head, x, batch_size=3)
    assert net.training and head.training
    net.eval()
    with torch.no_grad():
        ref_f = backbone((x - mean.view(1, 2, 1)) / std.view(1, 2, 1))
    torch.testing.assert_close(f, ref_f)
    torch.testing.assert_close(s, head.scores(ref_f))


@pytest.mark.parametrize("key,expected", [
    ("sw", True), ("cw", True), ("uni", True), ("uni_at_learned", True), ("sep_auc", True),
    ("uni_loss_learned", False), ("threshold_distance", False), ("threshold_distance_rel", False),
    ("t_star", None), ("learned_threshold", None), ("loss", False), ("terms.margin", False), ("train.terms.ce", False), ("val.uni", True), ("test.sw", True), ("verif_eer", False),
    ("intra_class_distance", False), ("intra_class_cosine", True), ("compactness_ratio", False),
    ("inter_class_distance_min", True), ("no_such_metric", None),
])
def test_metric_directions(key, expected):
    assert higher_is_better(key) is expected


# ---------------------------------------------------------------- the one evaluation
def test_every_evaluated_key_is_in_the_vocabulary():
    from unimargin.metrics.evaluate import open_set_metrics
    from unimargin.metrics.keys import KEYS

    torch.manual_seed(3)
    for name in ("bce-u", "lmdl", "cosface"):
        head = build_head(name, 4, 6)
        f, y = torch.randn(80, 6), torch.arange(80) % 4
        s = head.scores(f).detach()
        out = evaluate_outputs(f, s, y, head, deployed_threshold=0.1)
        uf = torch.randn(30, 6)
        out.update(open_set_metrics(head, s, y, uf, head.scores(uf).detach(), torch.arange(30) % 3))
        assert set(out) <= set(KEYS), set(out) - set(KEYS)


def test_open_set_with_one_unknown_class_reports_verification_unavailable():
    from unimargin.metrics.evaluate import open_set_metrics

    head = build_head("softmax", 3, 5)
    f, y = torch.randn(40, 5), torch.arange(40) % 3
    uf = torch.randn(10, 5)
    out = open_set_metrics(head, head.scores(f).detach(), y, uf, head.scores(uf).detach(),
                           torch.zeros(10, dtype=torch.long), threshold=0.0, threshold_source="given")
    assert out["verif_available"] is False and out["verif_roc_auc"] is None
    assert 0.0 <= out["reject_auroc"] <= 1.0 and out["reject_threshold"] == 0.0


def test_choose_threshold_learned_else_t_star_of_the_given_split():
    from unimargin.metrics import uniform_accuracy
    from unimargin.metrics.evaluate import choose_threshold

    f, y = torch.randn(60, 5), torch.arange(60) % 3
    soft = build_head("softmax", 3, 5)
    s = soft.scores(f).detach()
    t, source = choose_threshold(soft, s, y)
    assert t == uniform_accuracy(s, y).threshold and source == "t* (validation)"
    bce = build_head("bce-u", 3, 5)
    assert choose_threshold(bce, s, y) == (0.0, "learned")


@pytest.mark.parametrize("model", ["mlp", "cnn", "cnn1d", "resnet18"])
def test_compute_outputs_on_a_bare_builtin_backbone(model):
    from unimargin.models import build_model

    in_shape = (4,) if model == "mlp" else (1, 12) if model == "cnn1d" else (1, 8, 8)
    if model in ("cnn", "resnet18"):
        in_shape = (1, 16, 16)
    torch.manual_seed(0)
    backbone = build_model(model, in_shape, 8)
    head = build_head("softmax", 3, 8)
    x = torch.randn(5, *in_shape)
    f, s = compute_outputs(backbone, head, x, batch_size=2)
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(f, backbone(x))
    assert s.shape == (5, 3)


def test_evaluate_model_per_class_is_nested_and_consistent_with_sw():
    from unimargin.metrics.evaluate import evaluate_model

    torch.manual_seed(0)
    backbone, head = nn.Linear(5, 4), build_head("softmax", 3, 4)
    x, y = torch.randn(90, 5), torch.arange(90) % 3
    plain = evaluate_model(backbone, head, x, y)
    out = evaluate_model(backbone, head, x, y, per_class=True)
    assert "per_class" not in plain and set(out) - set(plain) == {"per_class"}
    pc = out["per_class"]
    cm = torch.tensor(pc["confusion"])
    assert cm.shape == (3, 4) and int(cm.sum()) == 90 and int(cm[:, 3].sum()) == 0
    assert int(cm.diagonal().sum()) / 90 == pytest.approx(out["sw"])
    assert len(pc["accuracy"]) == 3


# ---------------------------------------------------------------- open set, every score
def _open_set_data(seed=0, d_in=5, k=3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k + 2, d_in, generator=g) * 2
    def draw(n, classes):
        y = torch.tensor([classes[i % len(classes)] for i in range(n)])
        return centres[y] + torch.randn(n, d_in, generator=g), y
    x_val, y_val = draw(60, list(range(k)))
    x_test, y_test = draw(90, list(range(k)))
    x_unk, y_unk = draw(40, [k, k + 1])
    return x_val, y_val, x_test, y_test, x_unk, y_unk - k


def _loop_reference(head, model, name, means, x_val, y_val, x_test, y_test, x_unk):
    """Per-sample loops and sklearn: AUROC, threshold (validation), open-set accuracy."""
    import math

    from sklearn.metrics import roc_auc_score

    with torch.no_grad():
        def r_of(x):
            f = model(x).double()
            s = head.scores(model(x)).double()
            rows = []
            for i in range(len(x)):
                if name == "max_score":
                    rows.append(max(s[i].tolist()))
                elif name == "energy":
                    rows.append(math.log(sum(math.exp(v) for v in s[i].tolist())))
                else:
                    cos = [float(f[i] @ means[c].double() / (f[i].norm() * means[c].double().norm()))
                           for c in range(len(means))]
                    rows.append(max(cos))
            return rows, s
        val_r, val_s = r_of(x_val)
        test_r, test_s = r_of(x_test)
        unk_r, _ = r_of(x_unk)
    if name == "max_score":
        from unimargin.metrics import uniform_accuracy
        t = float(head.threshold) if head.threshold is not None else \
            uniform_accuracy(val_s, y_val).threshold
    else:
        v = sorted(set(val_r))
        cand = [v[0] - 1] + [(a + b) / 2 for a, b in zip(v, v[1:])] + [v[-1] + 1]
        t = max(c for c in cand if sum(r <= c for r in val_r) / len(val_r) <= 0.05)
    correct = []
    for i in range(len(x_test)):
        row = test_s[i].tolist()
        yi = int(y_test[i])
        correct.append(all(row[yi] > row[c] for c in range(len(row)) if c != yi))
    hits = sum(1 for r, c in zip(test_r, correct) if r > t and c) + sum(r <= t for r in unk_r)
    auroc = roc_auc_score([1] * len(test_r) + [0] * len(unk_r), test_r + unk_r)
    return auroc, t, hits / (len(test_r) + len(unk_r))


@pytest.mark.parametrize("head_name", ["softmax", "cosface", "bce-u", "bce-d"])
def test_evaluate_open_set_every_score_matches_loops_and_sklearn(head_name):
    from unimargin.metrics.evaluate import evaluate_open_set
    from unimargin.metrics.keys import KEYS, rejection_key
    from unimargin.metrics.rejection import class_means

    torch.manual_seed(0)
    model, head = nn.Linear(5, 4), build_head(head_name, 3, 4)
    x_val, y_val, x_test, y_test, x_unk, y_unk = _open_set_data()
    x_fit, y_fit, *_ = _open_set_data(seed=1)
    with torch.no_grad():
        means = class_means(model(x_fit), y_fit, 3)
    out = evaluate_open_set(model, head, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
                            x_unknown=x_unk, y_unknown=y_unk, class_means=means, batch_size=7)
    assert set(out) <= set(KEYS), set(out) - set(KEYS)
    assert out["verif_available"] is True and out["reject_n_unknown"] == 40
    for name in ("max_score", "centroid_cosine", "energy"):
        if name == "energy" and head_name.startswith("bce"):
            assert all(out[rejection_key(f, name)] is None
                       for f in ("auroc", "open_set_accuracy", "threshold"))
            continue
        auroc, t, acc = _loop_reference(head, model, name, means, x_val, y_val, x_test, y_test,
                                        x_unk)
        assert out[rejection_key("auroc", name)] == pytest.approx(auroc, abs=1e-9), name
        assert out[rejection_key("threshold", name)] == pytest.approx(t, abs=1e-6), name
        assert out[rejection_key("open_set_accuracy", name)] == pytest.approx(acc, abs=1e-12), name
    expected_source = "learned" if head_name.startswith("bce") else "t* (validation)"
    assert out["reject_threshold_source"] == expected_source


def test_evaluate_open_set_reads_no_test_label_for_a_choice():
    """Thresholds come from validation: random test labels change no threshold."""
    from unimargin.metrics.evaluate import evaluate_open_set

    torch.manual_seed(0)
    model, head = nn.Linear(5, 4), build_head("softmax", 3, 4)
    x_val, y_val, x_test, y_test, x_unk, y_unk = _open_set_data(seed=2)
    means = torch.randn(3, 4)
    kw = dict(x_val=x_val, y_val=y_val, x_test=x_test, x_unknown=x_unk, y_unknown=y_unk,
              class_means=means)
    a = evaluate_open_set(model, head, y_test=y_test, **kw)
    b = evaluate_open_set(model, head, y_test=torch.randint(0, 3, y_test.shape), **kw)
    for key in ("reject_threshold", "reject_threshold_energy", "reject_threshold_centroid_cosine",
                "reject_auroc", "reject_auroc_energy", "reject_auroc_centroid_cosine"):
        assert a[key] == b[key], key


def test_evaluate_open_set_without_means_or_validation():
    from unimargin.metrics.evaluate import evaluate_open_set

    torch.manual_seed(0)
    model, head = nn.Linear(5, 4), build_head("softmax", 3, 4)
    x_val, y_val, x_test, y_test, x_unk, y_unk = _open_set_data(seed=3)
    out = evaluate_open_set(model, head, x_val=None, y_val=None, x_test=x_test, y_test=y_test,
                            x_unknown=x_unk, y_unknown=y_unk)
    assert out["reject_auroc_centroid_cosine"] is None
    assert out["reject_auroc"] is not None and out["reject_auroc_energy"] is not None
    # no validation split: no threshold (the test split never chooses one)
    assert out["reject_threshold"] is None and out["reject_open_set_accuracy"] is None
    assert out["reject_threshold_energy"] is None
    assert out["reject_threshold_source"] == "none (no validation split)"


def test_evaluate_model_with_validation_gives_the_open_set_keys():
    from unimargin.metrics.evaluate import evaluate_model, evaluate_open_set

    torch.manual_seed(0)
    model, head = nn.Linear(5, 4), build_head("lmdl", 3, 4)
    x_val, y_val, x_test, y_test, x_unk, y_unk = _open_set_data(seed=4)
    means = torch.randn(3, 4)
    full = evaluate_model(model, head, x_test, y_test, x_unknown=x_unk, y_unknown=y_unk,
                          x_val=x_val, y_val=y_val, class_means=means)
    open_set = evaluate_open_set(model, head, x_val=x_val, y_val=y_val, x_test=x_test,
                                 y_test=y_test, x_unknown=x_unk, y_unknown=y_unk,
                                 class_means=means)
    assert {k: full[k] for k in open_set} == open_set
