"""Engine options for speed (issue 16): the head validates input values on the first step of
each epoch only, --eval-every, fp16 with a gradient scaler, channels_last; each checked
against the plain path."""

import json

import pytest
import torch

from unimargin.train import TrainConfig, load_run, train
from unimargin.train.net import uses_channels_last

SMALL = dict(dataset="mnist1d", limit_train=256, limit_test=100, batch_size=64, feat_dim=8,
             quiet=True, num_threads=1, warmup_epochs=0)


def test_head_validates_values_on_the_first_step_of_each_epoch(tmp_path, monkeypatch):
    from unimargin.train import net as net_module

    seen = []
    real = net_module.UnimarginNet.forward

    def spy(self, x, labels=None):
        if labels is not None and self.training:
            seen.append(self.head.validate)
        return real(self, x, labels)

    monkeypatch.setattr(net_module.UnimarginNet, "forward", spy)
    train(TrainConfig(out=str(tmp_path / "r"), head="lmdl", epochs=2, **SMALL))
    assert seen == [True, False, False, False] * 2      # 256 / 64 = 4 steps per epoch
    run = load_run(tmp_path / "r")
    assert run.head.validate is True                     # evaluation and users validate
    with pytest.raises(ValueError, match="NaN or Inf"):
        run.head(torch.full((2, 8), float("nan")), torch.zeros(2, dtype=torch.long))
    run.head.validate = False                            # the switch: values not checked
    run.head.check_features(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match="feat_dim"):    # shapes always are
        run.head.check_features(torch.zeros(2, 3))


def test_eval_every_evaluates_every_nth_and_the_last_epoch(tmp_path):
    summary = train(TrainConfig(out=str(tmp_path / "r"), head="softmax", epochs=5, eval_every=2,
                                schedule="constant", select_epoch="best", **SMALL))
    lines = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val"] is not None for r in lines] == [False, True, False, True, True]
    assert summary["selected_epoch"] in (2, 4, 5)
    with pytest.raises(ValueError, match="eval_every"):
        train(TrainConfig(out=str(tmp_path / "bad"), eval_every=0, **SMALL))


def test_fp16_with_a_gradient_scaler_trains_and_resumes_bitwise(tmp_path):
    common = dict(SMALL, head="bce-u", fp16=True, schedule="constant")
    ref = train(TrainConfig(out=str(tmp_path / "ref"), epochs=2, **common))
    fp32 = train(TrainConfig(out=str(tmp_path / "fp32"), epochs=2, **{**common, "fp16": False}))
    assert ref["status"] == "completed"
    assert ref["final"]["sw"] == pytest.approx(fp32["final"]["sw"], abs=0.05)   # same training
    losses = [json.loads(l)["train"]["loss"] for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert losses[1] < losses[0]
    ckpt = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["grad_scaler"]["scale"] > 0
    run = load_run(tmp_path / "ref")
    assert all(p.dtype == torch.float32 for p in run.model.parameters())  # master weights
    train(TrainConfig(out=str(tmp_path / "split"), epochs=1, **common))
    again = train(TrainConfig(out=str(tmp_path / "split"), epochs=2, resume=True, **common))
    a, b = load_run(tmp_path / "ref").model.state_dict(), load_run(tmp_path / "split").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and again["final"] == ref["final"]
    with pytest.raises(ValueError, match="mutually exclusive"):
        train(TrainConfig(out=str(tmp_path / "x"), bf16=True, **common))


def test_channels_last_is_on_for_2d_convolutions_and_computes_the_same(tmp_path):
    from unimargin.models import build_model

    cnn, mlp = build_model("cnn", (1, 8, 8), 8), build_model("mlp", (64,), 8)
    assert uses_channels_last(TrainConfig(), cnn, (1, 8, 8))
    assert not uses_channels_last(TrainConfig(), mlp, (64,))
    assert not uses_channels_last(TrainConfig(channels_last=False), cnn, (1, 8, 8))
    common = dict(SMALL, dataset="digits", model="cnn", limit_train=128, batch_size=32,
                  head="softmax", epochs=1)
    on = train(TrainConfig(out=str(tmp_path / "on"), **common))
    off = train(TrainConfig(out=str(tmp_path / "off"), channels_last=False, **common))
    a, b = load_run(tmp_path / "on").model.state_dict(), load_run(tmp_path / "off").model.state_dict()
    for k in a:   # the same maths in another memory order: equal to float rounding
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert on["final"]["sw"] == pytest.approx(off["final"]["sw"], abs=0.02)
    from unimargin.train.net import UnimarginNet
    from unimargin import build_head

    net = UnimarginNet(build_model("cnn", (1, 8, 8), 8), build_head("softmax", 10, 8), channels_last=True)
    weight = next(m.weight for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert weight.is_contiguous(memory_format=torch.channels_last)
