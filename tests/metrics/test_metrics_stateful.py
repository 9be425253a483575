import pytest
import torch

from distributed_utils import run_distributed
from unimargin.metrics import (FeatureGeometry, OpenSetRejection, SeparabilityAUC,
                               UniformAccuracy, Verification, feature_geometry,
                               open_set_rejection, separability_auc, uniform_accuracy,
                               verification)


class _Head:
    def __init__(self, w, b):
        self.w, self.b = w, b

    def linear_decision(self):
        return self.w, self.b


def _data(seed=0, n=70, k=4, d=3):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (n, k), generator=g).float()     # ties on purpose
    labels = torch.randint(0, k, (n,), generator=g)
    feats = torch.randn(n, d, generator=g) + torch.randn(k, d, generator=g)[labels] * 2
    unknown = torch.randint(0, 4, (n // 2, k), generator=g).float()
    head = _Head(torch.randn(k, d, generator=g), torch.randn(k, generator=g))
    return scores, labels, feats, unknown, head


def _splits(n, seed):
    g = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randint(0, n + 1, (4,), generator=g).tolist())   # may give empty batches
    bounds = [0, *cuts, n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _one_shot(scores, labels, feats, unknown, head, threshold=1.5, max_pairs=10**6):
    return {
        "uniform": uniform_accuracy(scores, labels, threshold),
        "sep": separability_auc(scores, labels),
        "geometry": feature_geometry(feats, labels, head),
        "verification": verification(feats, labels, max_pairs=max_pairs, seed=7),
        "open_set": open_set_rejection(scores, labels, unknown, threshold),
    }


def _meters(head, threshold=1.5, max_pairs=10**6):
    return {
        "uniform": UniformAccuracy(threshold), "sep": SeparabilityAUC(),
        "geometry": FeatureGeometry(head), "verification": Verification(max_pairs, seed=7),
        "open_set": OpenSetRejection(threshold),
    }


def _feed(meters, scores, labels, feats, unknown, splits, unknown_splits):
    for a, b in splits:
        meters["uniform"].update(scores[a:b], labels[a:b])
        meters["sep"].update(scores[a:b], labels[a:b])
        meters["geometry"].update(feats[a:b], labels[a:b])
        meters["verification"].update(feats[a:b], labels[a:b])
        meters["open_set"].update(known_scores=scores[a:b], known_labels=labels[a:b])
    for a, b in unknown_splits:
        meters["open_set"].update(unknown_scores=unknown[a:b])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_pairs", [10**6, 500])      # exact and sampled verification
def test_batched_equals_one_shot(seed, max_pairs):
    scores, labels, feats, unknown, head = _data(seed)
    expected = _one_shot(scores, labels, feats, unknown, head, max_pairs=max_pairs)
    meters = _meters(head, max_pairs=max_pairs)
    _feed(meters, scores, labels, feats, unknown, _splits(len(labels), seed),
          _splits(len(unknown), seed + 1))
    for name, meter in meters.items():
        assert meter.compute() == expected[name], name
    # reset forgets everything; a second pass gives the same again
    for meter in meters.values():
        meter.reset()
    _feed(meters, scores, labels, feats, unknown, [(0, len(labels))], [(0, len(unknown))])
    for name, meter in meters.items():
        assert meter.compute() == expected[name], name


def test_compute_without_data_and_inconsistent_widths():
    for meter in (UniformAccuracy(), SeparabilityAUC(), FeatureGeometry(), Verification(),
                  OpenSetRejection(0.0)):
        with pytest.raises(ValueError, match="no .* yet"):
            meter.compute()
    m = UniformAccuracy()
    m.update(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="columns"):
        m.update(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="threshold is required"):
        OpenSetRejection(None)


# ---- torch.distributed (gloo, 2 processes), uneven per-rank sizes --------------------

_RANK_SPLITS = {0: (0, 43), 1: (43, 70)}            # 43 and 27 samples
_UNKNOWN_SPLITS = {0: (0, 5), 1: (5, 35)}


def _ddp_worker(rank, world_size, payload):
    seed = payload
    scores, labels, feats, unknown, head = _data(seed)
    a, b = _RANK_SPLITS[rank]
    ua, ub = _UNKNOWN_SPLITS[rank]
    out = {}
    for max_pairs in (10**6, 500):                   # exact and sampled verification
        meters = _meters(head, max_pairs=max_pairs)
        # several local batches per rank, one of them empty
        mid = (a + b) // 2
        _feed(meters, scores, labels, feats, unknown, [(a, mid), (mid, mid), (mid, b)],
              [(ua, ub)])
        out[max_pairs] = {name: meter.compute() for name, meter in meters.items()}
    lonely = UniformAccuracy(1.5)                    # rank 1 never calls update()
    if rank == 0:
        lonely.update(scores, labels)
    out["lonely"] = lonely.compute()
    from unimargin.metrics import ConfusionMatrix, predictions
    cm = ConfusionMatrix(scores.shape[1])             # counts summed over ranks
    cm.update(labels[a:b], predictions(scores[a:b], labels[a:b]))
    out["confusion"] = cm.compute().tolist()
    return out


@pytest.mark.distributed
def test_distributed_equals_one_shot():
    seed = 3
    scores, labels, feats, unknown, head = _data(seed)
    results = run_distributed(_ddp_worker, world_size=2, payload=seed)
    assert len(results) == 2
    for max_pairs in (10**6, 500):
        expected = _one_shot(scores, labels, feats, unknown, head, max_pairs=max_pairs)
        for per_rank in results:
            for name in expected:
                assert per_rank[max_pairs][name] == expected[name], (max_pairs, name)
    from unimargin.metrics import confusion_matrix, predictions
    cm = confusion_matrix(labels, predictions(scores, labels), scores.shape[1]).tolist()
    for per_rank in results:
        assert per_rank["lonely"] == uniform_accuracy(scores, labels, 1.5)
        assert per_rank["confusion"] == cm
