"""Speed of the metrics relative to one plain pass over the same data (same run).

- ``uniform_accuracy`` on N = 1e6 samples, K = 100 classes (float32 scores), as a ratio to
  ``scores.max(1)`` (values + indices, one pass over the score matrix) and, for honesty,
  also to ``scores.amax(1)`` (values only, the fastest possible pass).
- ``separability_auc`` (compiled rank kernel) on N = 1e6 × K = 100 scores, as a ratio to
  ``uniform_accuracy`` on the same scores (target of issue 11: <= 2x), at 1 and 2 threads,
  on four inputs: (a) trained-like (randn, +4 at the label), (b) randn everywhere (full
  overlap), (c) heavy ties (rounded to 0.01, +1 at the label), (d) float64 (+2 at the
  label); with the numpy fallback (``_separability_numpy``: one sort of the N·K order keys,
  1 thread, timed once) and the peak resident memory each adds above the input.
- ``verification`` on N = 1e4 features of dimension d = 128, as a ratio to one pass over
  the features (``f.norm(dim=1)``) and to one plain N×N similarity matrix
  (``f̂ @ f̂.T``, the cheapest way to touch every pair once). Default ``max_pairs``
  (2e6 sampled pairs) and, once, the exact all-pairs mode (~5e7 pairs, blocked).

Every candidate is timed round-robin with its references (machine load hits all alike);
the table reports medians. Single thread (``torch.set_num_threads(1)``) except the
separability rows marked 2 threads (the kernel uses ``torch.get_num_threads()`` pthreads,
uniform_accuracy torch's intra-op threads).

    python benchmarks/metrics_speed.py            # writes benchmarks/results/metrics.md
    python benchmarks/metrics_speed.py --quick    # small smoke run, nothing written

Targets: uniform_accuracy <= 5x one pass (scores.max(1)); separability_auc <= 2x
uniform_accuracy, no N×K pair temporary.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from unimargin.metrics import (positive_negative, separability_auc, uniform_accuracy,
                               verification)
from unimargin.metrics.uniform import _separability_numpy, _uniform_from_pn


NOTES = """Notes. `scores.max(1)` (values + indices) is the reference the issue names; `amax(1)`
(values only) is a much faster vectorised pass and is shown for honesty. uniform_accuracy =
one blocked pass to extract p and n (positive_negative) plus two sorts of the <= 2N interval
endpoints (int64 order-preserving keys, ~3x faster than sorting float64) and cumulative sums.
A features pass is microseconds, so verification is also compared with one plain N×N
similarity matrix (the cheapest way to touch every pair once): the default sampled mode
(2e6 pairs) costs about that; the exact all-pairs mode (~5e7 pairs) is dominated by sorting
5e7 similarities and is for smaller N or offline use.
"""


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def round_robin(named: dict, repeats: int) -> dict:
    times = {k: [] for k in named}
    for fn in named.values():          # warm-up (allocator, first-touch pages)
        fn()
    for _ in range(repeats):
        for k, fn in named.items():
            times[k].append(_timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def bench_uniform(n: int, k: int, repeats: int):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(n, k, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    scores[torch.arange(n), labels] += 3.5             # a trained-classifier-like score matrix
    p, nn_ = positive_negative(scores, labels)
    named = {
        "scores.max(1)": lambda: scores.max(1),
        "scores.amax(1)": lambda: scores.amax(1),
        "uniform_accuracy": lambda: uniform_accuracy(scores, labels),
        "  part: positive_negative": lambda: positive_negative(scores, labels),
        "  part: sweeps (SW/CW/Uni/t*)": lambda: _uniform_from_pn(p, nn_, labels, k),
    }
    t = round_robin(named, repeats)
    res = uniform_accuracy(scores, labels)
    return t, f"SW {res.sw:.4f}, CW {res.cw:.4f}, Uni {res.uni:.4f}, t* {res.threshold:.4f}"


def _peak_extra_mb(fn) -> float:
    """Peak resident memory (MB) ``fn`` adds above the current resident set (Linux:
    /proc/self/clear_refs resets the high-water mark)."""
    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
        raise RuntimeError(field)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    base = status("VmRSS")
    fn()
    return status("VmHWM") - base


SEPARABILITY_CASES = {
    "a": "trained-like: randn, +4 at the label (float32)",
    "b": "randn everywhere, full overlap (float32)",
    "c": "heavy ties: rounded to 0.01, +1 at the label (float32)",
    "d": "float64: randn, +2 at the label",
}


def separability_scores(case: str, n: int, k: int):
    """The benchmark inputs (a)-(d) of :data:`SEPARABILITY_CASES`."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(n, k, generator=g, dtype=torch.float64 if case == "d" else torch.float32)
    labels = torch.randint(0, k, (n,), generator=g)
    rows = torch.arange(n)
    if case == "a":
        scores[rows, labels] += 4.0
    elif case == "c":
        scores = torch.round(scores * 100) / 100
        scores[rows, labels] += 1.0
    elif case == "d":
        scores[rows, labels] += 2.0
    return scores, labels


def bench_separability(n: int, k: int, repeats: int):
    """Rows per (case, threads): uniform_accuracy and separability_auc round-robin on the same
    scores; the numpy fallback once per case at 1 thread; peak extra memory at 1 thread."""
    rows, notes = [], []
    for case, title in SEPARABILITY_CASES.items():
        scores, labels = separability_scores(case, n, k)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t = round_robin({"uniform_accuracy": lambda: uniform_accuracy(scores, labels),
                             "separability_auc": lambda: separability_auc(scores, labels)}, repeats)
            load = os.getloadavg()[0]
            rows.append((case, threads, t["uniform_accuracy"], t["separability_auc"], load))
        torch.set_num_threads(1)
        fallback = _timed(lambda: _separability_numpy(scores, labels))
        mem_kernel = _peak_extra_mb(lambda: separability_auc(scores, labels))
        mem_uni = _peak_extra_mb(lambda: uniform_accuracy(scores, labels))
        mem_numpy = _peak_extra_mb(lambda: _separability_numpy(scores, labels))
        auc, ref = separability_auc(scores, labels), _separability_numpy(scores, labels)
        if auc != ref:
            raise AssertionError(f"case {case}: kernel {auc!r} != numpy {ref!r}")
        notes.append(f"({case}) {title}: AUC {auc:.10f} (numpy fallback identical); numpy fallback "
                     f"{fallback:.2f} s at 1 thread ({fallback / rows[-2][2]:.1f}x uniform_accuracy); "
                     f"peak extra resident memory (MB, input {scores.numel() * scores.element_size() / 2**20:.0f}): "
                     f"kernel {mem_kernel:.0f}, uniform_accuracy {mem_uni:.0f}, numpy fallback {mem_numpy:.0f}")
    lines = ["| input | threads | uniform_accuracy (s) | separability_auc (s) | ratio | load (1 min) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for case, threads, tu, ts, load in rows:
        lines.append(f"| ({case}) | {threads} | {tu:.3f} | {ts:.3f} | {ts / tu:.2f}x | {load:.1f} |")
    return "\n".join(lines), notes


def bench_verification(n: int, d: int, k: int, repeats: int, exact: bool):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, k, (n,), generator=g)
    feats = torch.randn(k, d, generator=g)[labels] + 2.0 * torch.randn(n, d, generator=g)

    def gram():
        fh = torch.nn.functional.normalize(feats, dim=1)
        return fh @ fh.T

    named = {
        "features pass (f.norm(dim=1))": lambda: feats.norm(dim=1),
        "plain N×N similarity matrix": gram,
        "verification (max_pairs=2e6, sampled)": lambda: verification(feats, labels),
    }
    t = round_robin(named, repeats)
    res = verification(feats, labels)
    note = (f"AUC {res['roc_auc']:.4f}, EER {res['eer']:.4f}, "
            f"{res['n_genuine']}+{res['n_impostor']} pairs")
    if exact:
        total = n * (n - 1) // 2
        t["verification (exact, all pairs)"] = _timed(lambda: verification(feats, labels, max_pairs=total))
        ex = verification(feats, labels, max_pairs=total)
        note += f"; exact: AUC {ex['roc_auc']:.4f}, EER {ex['eer']:.4f}, {total} pairs"
    return t, note


def table(title: str, times: dict, refs: list[str]) -> str:
    lines = [f"### {title}", "", "| operation | median time (s) | " + " | ".join(f"ratio vs {r}" for r in refs) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in refs) + " |"]
    for name, sec in times.items():
        ratios = " | ".join(f"{sec / times[r]:.1f}x" for r in refs)
        lines.append(f"| {name.strip()} | {sec:.4f} | {ratios} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run, nothing written")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "metrics.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n_u, n_v = (20_000, 1_000) if args.quick else (1_000_000, 10_000)
    repeats = 2 if args.quick else args.repeats

    load_before = os.getloadavg()[0]
    t_u, note_u = bench_uniform(n_u, 100, repeats)
    table_s, notes_s = bench_separability(n_u, 100, repeats)
    torch.set_num_threads(1)
    t_v, note_v = bench_verification(n_v, 128, 100, repeats, exact=not args.quick)
    md = [
        "# Metrics speed (benchmarks/metrics_speed.py)", "",
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, "
        f"median of {repeats} round-robin repeats (shared machine: expect noise).", "",
        table(f"uniform_accuracy, N = {n_u:,}, K = 100 (float32)", t_u, ["scores.max(1)", "scores.amax(1)"]),
        "", f"Result: {note_u}.", "",
        f"### separability_auc vs uniform_accuracy, N = {n_u:,}, K = 100", "", table_s, "",
        *[f"- {note}." for note in notes_s], "",
        table(f"verification, N = {n_v:,}, d = 128, 100 classes", t_v,
              ["features pass (f.norm(dim=1))", "plain N×N similarity matrix"]),
        "", f"Result: {note_v}.", "",
        NOTES,
        f"Load average (1 min) at start / end: {load_before:.2f} / {os.getloadavg()[0]:.2f}.",
    ]
    text = "\n".join(md)
    print(text)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
