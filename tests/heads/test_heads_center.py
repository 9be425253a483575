"""center (SPEC §2.5) against the per-class loop reference, over consecutive steps."""

import torch

from heads_reference import center_reference_step
from unimargin import build_head

STEPS = [[0, 0, 1, 2, 2, 2], [1, 3, 3, 1], [0, 4, 4, 4, 2]]  # absent / first-seen classes


def test_matches_loop_reference_over_steps():
    K, d = 5, 3
    head = build_head("center", K, d, center_weight=0.3, center_lr=0.7).double()
    gen = torch.Generator().manual_seed(2)
    ref_centers = torch.zeros(K, d, dtype=torch.float64)
    for labels in STEPS:
        y = torch.tensor(labels)
        f = torch.randn(len(y), d, generator=gen, dtype=torch.float64).requires_grad_()
        out = head(f, y)
        grads = torch.autograd.grad(out.loss, [f, head.weight, head.bias])
        W = head.weight.detach().clone().requires_grad_()
        b = head.bias.detach().clone().requires_grad_()
        f_ref = f.detach().clone().requires_grad_()
        loss, ce, sq, ref_centers = center_reference_step(f_ref, y, W, b, ref_centers, 0.3, 0.7)
        torch.testing.assert_close(out.loss, loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.terms["ce"], ce.detach())
        torch.testing.assert_close(out.terms["center"], sq.detach())
        for g, rg in zip(grads, torch.autograd.grad(loss, [f_ref, W, b])):
            torch.testing.assert_close(g, rg, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(head.centers, ref_centers, rtol=0, atol=1e-14)
        with torch.no_grad():
            head.weight -= 0.5 * grads[1]
    assert head.centers.abs().sum(1).gt(0).tolist() == [True] * 5


def test_no_gradient_into_centers_and_eval_does_not_update():
    head = build_head("center", 3, 2)
    assert not head.centers.requires_grad and "centers" in dict(head.named_buffers())
    head(torch.randn(4, 2), torch.tensor([0, 1, 1, 2]))
    head.eval()
    before = head.centers.clone()
    head(torch.randn(4, 2), torch.tensor([0, 1, 1, 2]))
    assert torch.equal(head.centers, before)
