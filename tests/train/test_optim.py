"""Parameter groups (weight-decay exclusions) and learning-rate schedules vs closed forms."""

import math

import pytest
import torch
from torch import nn

from unimargin import build_head
from unimargin.train.net import UnimarginNet
from unimargin.train.optim import build_optimizer, build_scheduler, parameter_groups


def _net(head_name):
    backbone = nn.Sequential(nn.Linear(5, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    return UnimarginNet(backbone, build_head(head_name, 3, 4))


@pytest.mark.parametrize("head_name", ["softmax", "bce-u", "lmdl", "bce-d"])
def test_weight_decay_skips_biases_norms_and_head_exclusions(head_name):
    net = _net(head_name)
    groups = parameter_groups(net, net.head, weight_decay=0.1)
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = dict(net.named_parameters())
    assert set(by_id) == {id(p) for p in names.values()}  # every parameter exactly once
    assert sum(len(g["params"]) for g in groups) == len(names)
    expected_decay = {"backbone.0.weight", "backbone.3.weight", "head.weight"}
    for name, p in names.items():
        assert by_id[id(p)] == (0.1 if name in expected_decay else 0.0), name
    for rel in net.head.no_decay_parameters():
        assert by_id[id(names["head." + rel])] == 0.0


def _lrs(schedule, epochs=4, steps=5, warmup=1.0, milestones=(), gamma=0.1):
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [p]}], "sgd", lr=0.2, momentum=0.9, nesterov=True)
    sched = build_scheduler(opt, epochs=epochs, steps_per_epoch=steps, schedule=schedule,
                            warmup_epochs=warmup, milestones=milestones, gamma=gamma)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup_matches_closed_form():
    lrs = _lrs("cosine", epochs=4, steps=5, warmup=1.0)
    warm, total = 5, 20
    ref = [0.2 * (i + 1) / warm if i < warm
           else 0.2 * 0.5 * (1 + math.cos(math.pi * (i - warm) / (total - warm))) for i in range(total)]
    assert lrs == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_multistep_matches_closed_form():
    lrs = _lrs("multistep", epochs=4, steps=3, warmup=0, milestones=(2, 3), gamma=0.5)
    ref = [0.2 * 0.5 ** sum(e >= m for m in (2, 3)) for e in range(4) for _ in range(3)]
    assert lrs == pytest.approx(ref, rel=1e-12)


def test_scheduler_state_round_trip_continues_identically():
    full = _lrs("cosine", epochs=3, steps=4, warmup=0.5)
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [p]}], "sgd", lr=0.2)
    sched = build_scheduler(opt, epochs=3, steps_per_epoch=4, schedule="cosine", warmup_epochs=0.5)
    for _ in range(5):
        opt.step()
        sched.step()
    state_o, state_s = opt.state_dict(), sched.state_dict()
    p2 = nn.Parameter(torch.zeros(1))
    opt2 = build_optimizer([{"params": [p2]}], "sgd", lr=0.2)
    sched2 = build_scheduler(opt2, epochs=3, steps_per_epoch=4, schedule="cosine", warmup_epochs=0.5)
    opt2.load_state_dict(state_o)
    sched2.load_state_dict(state_s)
    rest = []
    for _ in range(7):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == full[5:]


@pytest.mark.parametrize("name,nesterov", [("sgd", True), ("sgd", False), ("adamw", False)])
@pytest.mark.parametrize("head_name", ["softmax", "lmdl", "bce-u"])
def test_optimizer_matches_the_per_parameter_loop_bit_for_bit(name, nesterov, head_name):
    """build_optimizer's multi-tensor (foreach) update vs torch's per-parameter reference
    loop (foreach=False) over 60 steps with a warm-up schedule and two decay groups: equal
    weights and optimiser state, bit for bit (a faster path that changed results would
    change every run)."""
    torch.manual_seed(0)
    nets = (_net(head_name), _net(head_name))
    nets[1].load_state_dict(nets[0].state_dict())
    fast = build_optimizer(parameter_groups(nets[0], nets[0].head, 5e-4), name, lr=0.05,
                           momentum=0.9, nesterov=nesterov)
    groups = parameter_groups(nets[1], nets[1].head, 5e-4)
    if name == "sgd":
        ref = torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=nesterov, foreach=False)
    else:
        ref = torch.optim.AdamW(groups, lr=0.05, betas=(0.9, 0.999), foreach=False)
    assert all(g["foreach"] for g in fast.param_groups)
    schedulers = [build_scheduler(o, epochs=3, steps_per_epoch=20, schedule="cosine", warmup_epochs=1)
                  for o in (fast, ref)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        x, y = torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        for net, opt, sched in zip(nets, (fast, ref), schedulers):
            _, out = net(x, y)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            sched.step()
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k
    for state_a, state_b in zip(fast.state_dict()["state"].values(), ref.state_dict()["state"].values()):
        for key in state_a:
            assert torch.equal(torch.as_tensor(state_a[key]), torch.as_tensor(state_b[key])), key
