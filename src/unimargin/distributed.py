"""Thin helpers over ``torch.distributed`` shared by heads, metrics and the engine.

Every helper is a no-op (identity) when torch.distributed is not initialised or the
world has one process, so single-process code pays nothing. DESIGN.md, "Distributed".
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
    """Sum ``tensor`` over all processes and return the result (input left untouched).

    With ``differentiable=True`` the reduction is part of the autograd graph: its backward
    sums the incoming gradients over processes. A loss that is a function of globally
    reduced statistics is then *identical* on every process, and after DDP averages the
    parameter gradients, each parameter receives exactly the gradient of the
    single-process loss on the concatenated batch (the sum over processes of the local
    paths, divided by P, times P from the reduction's backward).
    """
    if not is_distributed():
        return tensor
    if differentiable:
        return _AllReduceSum.apply(tensor)
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the backward of a sum-reduction is the sum-reduction of the
    incoming gradients (every rank's output depends on every rank's input).

    Written here rather than taken from ``torch.distributed.nn.functional``, which
    torch 2.13 marks as deprecated.
    """

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (first dimension may differ per process) over processes.

    Exact: each process's true length is exchanged first, so padding added for the
    collective is removed again and no sample is duplicated or dropped. Not
    differentiable (used for evaluation). The result is in rank order.
    """
    if not is_distributed():
        return tensor
    tensor = tensor.detach().contiguous()
    n_local = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    sizes = [torch.zeros_like(n_local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n_local)
    lengths = [int(s.item()) for s in sizes]
    n_max = max(lengths)
    padded = tensor.new_zeros((n_max, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    buckets = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(buckets, padded)
    return torch.cat([b[:n] for b, n in zip(buckets, lengths)], dim=0)


def broadcast_object(obj, src: int = 0):
    """Broadcast a picklable Python object from ``src`` to every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
