"""Train a few heads for one epoch on MNIST-1D with a BatchNorm-free MLP backbone.

Run under torchrun (``python -m torch.distributed.run --nproc-per-node 2 ddp_script.py OUT``)
or as a plain single process (``python ddp_script.py OUT``); the engine detects torchrun's
environment itself. BatchNorm is avoided because under DDP each process normalises with
its own batch statistics (SyncBatchNorm needs CUDA), which would make the comparison
meaningless; every other part of the step is exactly the single-process computation.
"""

import sys

import torch
from torch import nn

HEADS = ("softmax", "bce-u", "lmdl")


def plain_mlp(in_shape, feat_dim):
    width = 1
    for s in in_shape:
        width *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, feat_dim))


def main(out_root: str) -> None:
    torch.set_num_threads(1)
    from unimargin.train import TrainConfig, shutdown_distributed, train

    for head in HEADS:
        cfg = TrainConfig(dataset="mnist1d", model="mlp", head=head, feat_dim=16, epochs=1,
                          batch_size=128, limit_train=512, limit_test=200, seed=3,
                          warmup_epochs=0, out=f"{out_root}/{head}", quiet=True)
        train(cfg, build_backbone=plain_mlp)  # the first call creates the group, the rest reuse it
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
