"""@register_head: a head defined outside the package brings its own metadata."""

import pytest
import torch
import torch.nn.functional as F

import unimargin
from unimargin.heads import Head, HeadOutput, build_head, list_heads, recommended_settings
from unimargin.heads import registry


class _ToyHead(Head):
    """Cosine-free toy: logits = f[:, :K] (needs feat_dim >= K)."""

    def __init__(self, num_classes, feat_dim, temperature=1.0):
        super().__init__(num_classes, feat_dim)
        self.weight = torch.nn.Parameter(torch.eye(num_classes, feat_dim))
        self.temperature = temperature

    def scores(self, features):
        return features @ self.weight.t() / self.temperature

    def forward(self, features, labels):
        logits = self.scores(features)
        loss = F.cross_entropy(logits, labels)
        return HeadOutput(loss, logits, {"ce": loss.detach()})


@pytest.fixture
def toy_registered():
    unimargin.register_head("toy-test", recommended={"lr": 0.02})(_ToyHead)
    yield "toy-test"
    registry._HEADS.pop("toy-test", None)
    registry._RECOMMENDED.pop("toy-test", None)


def test_builtin_order_and_settings():
    assert list_heads()[:8] == ["softmax", "normface", "cosface", "arcface", "center", "lmdl",
                                "bce-u", "bce-d"]
    assert recommended_settings("arcface")["lr"] == 0.01
    assert recommended_settings("cosface")["lr"] == 0.05


def test_outside_head_builds_and_has_settings(toy_registered):
    head = build_head(toy_registered, num_classes=3, feat_dim=4, temperature=2.0)
    assert head.name == "toy-test" and head.temperature == 2.0
    rec = recommended_settings(toy_registered)
    assert rec["lr"] == 0.02 and rec["optimizer"] == "sgd"  # missing keys: CE family
    out = head(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    assert out.logits.shape == (5, 3)
    with pytest.raises(ValueError, match="temperature"):
        build_head(toy_registered, 3, 4, tau=1.0)


def test_registration_errors(toy_registered):
    with pytest.raises(ValueError, match="already registered"):
        unimargin.register_head("softmax")(_ToyHead)
    with pytest.raises(TypeError, match="subclass"):
        unimargin.register_head("not-a-head")(dict)
    with pytest.raises(ValueError, match="unknown recommended"):
        unimargin.register_head("bad", recommended={"learning_rate": 1})
    with pytest.raises(ValueError, match="valid heads"):
        recommended_settings("nope")
