import torch

from distributed_utils import run_distributed
from unimargin import distributed as udist


def _gather_worker(rank, world_size, payload):
    # uneven lengths on purpose: rank r holds r + 2 rows
    local = torch.arange(rank + 2, dtype=torch.float32).unsqueeze(1) + 10 * rank
    gathered = udist.all_gather_cat(local)
    x = torch.full((3,), float(rank + 1), requires_grad=True)
    total = udist.all_reduce_sum(x * x, differentiable=True).sum()
    total.backward()
    return gathered, total.detach(), x.grad


def test_single_process_helpers_are_identity():
    x = torch.randn(4, 2)
    assert udist.all_gather_cat(x) is x
    assert udist.all_reduce_sum(x) is x
    assert udist.world_size() == 1 and udist.rank() == 0 and udist.is_main_process()


def test_gather_is_exact_and_reduce_is_differentiable():
    results = run_distributed(_gather_worker, world_size=2)
    expected = torch.tensor([[0.0], [1.0], [10.0], [11.0], [12.0]])
    for gathered, total, grad in results:
        assert torch.equal(gathered, expected)  # no padding duplicates, rank order
        assert total.item() == 3 * 1.0 + 3 * 4.0
    # backward of the summed reduction: d(sum over ranks)/dx_r = 2 x_r, summed over 2 ranks
    assert torch.equal(results[0][2], torch.full((3,), 2 * 2 * 1.0))
    assert torch.equal(results[1][2], torch.full((3,), 2 * 2 * 2.0))
