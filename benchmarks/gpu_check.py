"""GPU check (issue 16): head speed ratios on CUDA and one Fashion-MNIST epoch of the engine.

Run on a machine with a CUDA GPU (under 5 minutes):

    python benchmarks/gpu_check.py [--device cuda:0] [--repeats 7] [--no-epoch]

1. For B = 256, d in {128, 512} and K in {10, 32, 64, 65, 100, 256, 1000, 10000}: the
   forward + backward time of every head as a ratio to plain ``nn.Linear`` +
   ``F.cross_entropy`` in the same process (round-robin repetitions, median, every step
   closed by ``torch.cuda.synchronize()``). On CUDA lmdl runs its PyTorch paths (the
   all-classes fused step for K <= 64, THE formula above; the compiled kernel is CPU-only).
2. One training epoch of ``unimargin.train.train`` on Fashion-MNIST with the ``cnn``
   backbone and the softmax head (and with ``--fp16``), if the dataset files are
   installed (/usr/share/datasets/fashion-mnist); skipped with a message otherwise.

Without CUDA it prints why and exits 0 (nothing to measure here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from heads_speed import K_GRID   # the one K grid of the head benchmarks (this folder)
DIMS = (128, 512)
BATCH = 256


def head_ratios(device: torch.device, repeats: int, heads: list[str]) -> list[tuple]:
    """Rows (d, K, plain ms, {head: ratio}) measured round-robin on ``device``."""
    from unimargin import build_head

    rows = []
    for d in DIMS:
        for K in K_GRID:
            gen = torch.Generator().manual_seed(0)
            feats = torch.randn(BATCH, d, generator=gen).to(device)
            labels = torch.randint(0, K, (BATCH,), generator=gen).to(device)
            linear = torch.nn.Linear(d, K).to(device)
            modules = {"plain": linear, **{h: build_head(h, K, d).to(device) for h in heads}}

            def step(name):
                module = modules[name]
                module.zero_grad(set_to_none=True)
                f = feats.clone().requires_grad_()
                loss = F.cross_entropy(linear(f), labels) if name == "plain" else module(f, labels).loss
                loss.backward()

            times = {name: [] for name in modules}
            for r in range(repeats + 2):  # two warm-up rounds (cuBLAS handles, allocator)
                for name in modules:
                    torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                    step(name)
                    torch.cuda.synchronize(device)
                    if r >= 2:
                        times[name].append(time.perf_counter() - t0)
            med = {name: statistics.median(v) for name, v in times.items()}
            rows.append((d, K, med["plain"] * 1e3, {h: med[h] / med["plain"] for h in heads}))
            print(f"d={d} K={K} plain {med['plain'] * 1e3:.3f} ms  "
                  + "  ".join(f"{h} {med[h] / med['plain']:.2f}x" for h in heads), flush=True)
    return rows


def fashion_epoch(device: str) -> None:
    from unimargin.data import fashion_mnist
    from unimargin.train import TrainConfig, train

    if not fashion_mnist.DEFAULT_DIR.is_dir():
        print(f"Fashion-MNIST epoch: skipped ({fashion_mnist.DEFAULT_DIR} not found; "
              "apt-get install dataset-fashion-mnist)")
        return
    for fp16 in (False, True):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            summary = train(TrainConfig(dataset="fashion-mnist", model="cnn", head="softmax", epochs=1,
                                        device=device, fp16=fp16, out=out, overwrite=True, quiet=True))
            wall = time.perf_counter() - t0
        print(f"Fashion-MNIST cnn softmax, 1 epoch, fp16={fp16}: {wall:.1f} s wall, "
              f"status {summary['status']}, engine runtime {summary['runtime_s']:.1f} s", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--heads", default="lmdl,bce-u,normface,cosface,arcface,softmax")
    ap.add_argument("--no-epoch", action="store_true", help="skip the Fashion-MNIST epoch")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device available (torch.cuda.is_available() is False); "
              "nothing to measure on this machine. Run it on a GPU machine.")
        return 0
    device = torch.device(args.device)
    print(f"gpu_check on {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
          f"B = {BATCH}, median of {args.repeats}, ratios to plain nn.Linear + cross_entropy")
    head_ratios(device, args.repeats, [h for h in args.heads.split(",") if h])
    if not args.no_epoch:
        fashion_epoch(args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
