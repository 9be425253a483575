"""One training step of the default backbone (cnn1d on MNIST-1D's (1, 40) signals) with
``PairMaxPool1d`` (as shipped) against the same model with ``nn.MaxPool1d(2)``.

Both models start from the same weights and take the same SGD steps on the same batch,
timed round-robin in this process (1 thread); the script checks that their weights are
equal bit for bit after every round, so the ratio is of two identical computations.

    python benchmarks/cnn1d_pool.py            # batches 64, 128, 256; median of 60 steps
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F

from unimargin.models.cnn1d import CNN1D, PairMaxPool1d


def with_max_pool1d(model: CNN1D) -> CNN1D:
    reference = copy.deepcopy(model)
    for i, layer in enumerate(reference.body):
        if isinstance(layer, PairMaxPool1d):
            reference.body[i] = torch.nn.MaxPool1d(2)
    return reference


def bench(batch: int, steps: int) -> tuple[float, float, float]:
    """(MaxPool1d ms, PairMaxPool1d ms, ratio) per training step, medians."""
    torch.manual_seed(0)
    ours = CNN1D((1, 40), 64)
    models = {"MaxPool1d": with_max_pool1d(ours), "PairMaxPool1d": ours}
    optims = {k: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for k, m in models.items()}
    x, y = torch.randn(batch, 1, 40), torch.randint(0, 64, (batch,))
    times = {k: [] for k in models}
    for r in range(steps + 5):
        for k, model in models.items():
            t0 = time.perf_counter()
            optims[k].zero_grad()
            F.cross_entropy(model(x), y).backward()
            optims[k].step()
            if r >= 5:
                times[k].append(time.perf_counter() - t0)
        for a, b in zip(models["MaxPool1d"].parameters(), models["PairMaxPool1d"].parameters()):
            if not torch.equal(a, b):
                raise AssertionError(f"batch {batch}: weights differ after step {r}")
    ref, new = (statistics.median(times[k]) * 1e3 for k in models)
    return ref, new, new / ref


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"load (1 min) {os.getloadavg()[0]:.2f}, torch {torch.__version__}, 1 thread")
    print("| batch | MaxPool1d step (ms) | PairMaxPool1d step (ms) | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for batch in (64, 128, 256):
        ref, new, ratio = bench(batch, args.steps)
        print(f"| {batch} | {ref:.2f} | {new:.2f} | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
