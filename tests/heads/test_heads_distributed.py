"""Data-parallel correctness of lmdl and center (DESIGN.md, "Distributed").

2 gloo processes with batch B/2 each, wrapped in real DistributedDataParallel, must end
every step with the same buffers, the same loss terms and (after DDP's gradient mean)
the same gradients as 1 process with the concatenated batch B.
"""

import pytest
import torch
from torch import nn

from distributed_utils import run_distributed
from unimargin import build_head

IN_DIM, FEAT, K = 6, 4, 5
# per step: labels of the global batch; rank 0 takes the first half, rank 1 the second.
# Classes present on one rank only, absent classes and first-seen classes all occur.
STEP_LABELS = [
    [0, 0, 1, 2, 1, 1, 3, 2],
    [4, 4, 4, 1, 0, 3, 3, 3],
    [2, 2, 2, 2, 0, 4, 1, 1],
]
# K > 64: past the fused single-process step; DDP and one process both run THE formula
# (heads/lmdl/terms.py) on the present classes only.
K_LARGE = 70
STEP_LABELS_LARGE = [
    [0, 65, 69, 2, 65, 1, 3, 69],
    [64, 64, 66, 1, 0, 68, 68, 3],
    [69, 69, 2, 2, 0, 66, 1, 1],
]
HPARAMS = {
    "lmdl": dict(delta_v=0.2, delta_d=2.5, momentum=0.5, reg_weight=0.1),
    "lmdl-k70": dict(delta_v=0.2, delta_d=2.5, momentum=0.5, reg_weight=0.1),
    "center": dict(center_weight=0.5, center_lr=0.6),
}


class _Net(nn.Module):
    def __init__(self, head_name):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Linear(IN_DIM, FEAT)
        name, classes = ("lmdl", K_LARGE) if head_name == "lmdl-k70" else (head_name, K)
        self.head = build_head(name, classes, FEAT, **HPARAMS[head_name])

    def forward(self, x, y):
        return self.head(self.backbone(x), y)


def _data(head_name="lmdl"):
    steps = STEP_LABELS_LARGE if head_name == "lmdl-k70" else STEP_LABELS
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(len(labels), IN_DIM, generator=gen, dtype=torch.float64) for labels in steps]
    return xs, [torch.tensor(labels) for labels in steps]


def _train(model, step_batches, lr=0.2):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    records = []
    for x, y in step_batches:
        opt.zero_grad()
        out = model(x, y)
        out.loss.backward()
        inner = model.module if hasattr(model, "module") else model
        records.append({
            "grads": {n: p.grad.detach().clone() for n, p in inner.named_parameters()},
            "buffers": {n: b.detach().clone() for n, b in inner.named_buffers()},
            "terms": {k: v.clone() for k, v in out.terms.items()},
        })
        opt.step()
    return records


def _run_case(rank, head_name, empty_rank1):
    from torch.nn.parallel import DistributedDataParallel

    xs, ys = _data(head_name)
    batches = []
    for x, y in zip(xs, ys):
        half = len(y) // 2
        if empty_rank1:  # rank 0 gets everything, rank 1 an empty batch
            sl = slice(0, len(y)) if rank == 0 else slice(0, 0)
        else:
            sl = slice(0, half) if rank == 0 else slice(half, len(y))
        batches.append((x[sl], y[sl]))
    model = DistributedDataParallel(_Net(head_name).double())
    return _train(model, batches)


def _worker(rank, world_size, payload):
    # one spawn for every case: starting processes dominates the test time
    return {case: _run_case(rank, *case) for case in payload}


CASES = [("lmdl", False), ("lmdl-k70", False), ("center", False), ("lmdl", True), ("center", True)]


@pytest.fixture(scope="module")
def distributed_runs():
    per_rank = run_distributed(_worker, world_size=2, payload=CASES)
    return {case: [r[case] for r in per_rank] for case in CASES}


@pytest.mark.distributed
@pytest.mark.parametrize("head_name", ["lmdl", "lmdl-k70", "center"])
def test_two_processes_match_one_process(head_name, distributed_runs):
    xs, ys = _data(head_name)
    single = _train(_Net(head_name).double(), list(zip(xs, ys)))
    ranks = distributed_runs[(head_name, False)]
    for step, ref in enumerate(single):
        for rec in (r[step] for r in ranks):
            for n, b in ref["buffers"].items():
                torch.testing.assert_close(rec["buffers"][n], b, rtol=1e-12, atol=1e-12, msg=f"{n} step {step}")
            for n, g in ref["grads"].items():
                torch.testing.assert_close(rec["grads"][n], g, rtol=1e-10, atol=1e-12, msg=f"{n} step {step}")
            global_terms = ["compact", "margin", "reg"] if head_name.startswith("lmdl") else []
            for k in global_terms:  # identical on every rank, equal to the full batch
                torch.testing.assert_close(rec["terms"][k], ref["terms"][k], rtol=1e-12, atol=1e-12)
        # CE (a local mean) averaged over the equal halves = CE of the full batch
        ce_mean = (ranks[0][step]["terms"]["ce"] + ranks[1][step]["terms"]["ce"]) / 2
        torch.testing.assert_close(ce_mean, ref["terms"]["ce"], rtol=1e-12, atol=1e-12)
    if head_name == "lmdl":
        assert bool(single[-1]["buffers"]["head.seen"].all())
    if head_name == "lmdl-k70":
        seen = single[-1]["buffers"]["head.seen"]
        assert seen.shape == (K_LARGE,) and int(seen.sum()) == len(set(sum(STEP_LABELS_LARGE, [])))


@pytest.mark.distributed
def test_center_rank_with_empty_batch_joins_collectives(distributed_runs):
    xs, ys = _data()
    single = _train(_Net("center").double(), list(zip(xs, ys)))
    ranks = distributed_runs[("center", True)]
    for rec in ranks:
        torch.testing.assert_close(rec[0]["buffers"]["head.centers"], single[0]["buffers"]["head.centers"],
                                   rtol=1e-12, atol=1e-12)
    assert ranks[1][0]["terms"]["ce"].item() == 0.0


@pytest.mark.distributed
def test_rank_with_empty_batch_joins_collectives(distributed_runs):
    xs, ys = _data()
    single = _train(_Net("lmdl").double(), list(zip(xs, ys)))
    ranks = distributed_runs[("lmdl", True)]
    # no hang; buffers and the global lmdl terms still equal the full-batch run at step 0
    # (later steps differ: DDP halves rank 0's CE gradient, so the parameters diverge)
    for rec in ranks:
        for n, b in single[0]["buffers"].items():
            torch.testing.assert_close(rec[0]["buffers"][n], b, rtol=1e-12, atol=1e-12)
        for k in ("compact", "margin", "reg"):
            torch.testing.assert_close(rec[0]["terms"][k], single[0]["terms"][k], rtol=1e-12, atol=1e-12)
    assert ranks[1][0]["terms"]["ce"].item() == 0.0
    torch.testing.assert_close(ranks[0][-1]["buffers"]["head.centroids"], ranks[1][-1]["buffers"]["head.centroids"])
