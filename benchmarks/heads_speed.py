"""Forward+backward speed of every head relative to plain ``nn.Linear + F.cross_entropy``.

For each (B, K, d) the plain reference and every head are timed round-robin in the same
run (so machine load hits all of them alike); the table reports median time ratios
head / plain. It also times lmdl against a per-class Python loop reference (the shape of
the authors' code; the loop is over classes, the pairwise part inside each class is
vectorised), only at K <= 1000 because the loop becomes impractically slow beyond.

    python benchmarks/heads_speed.py            # full run, writes benchmarks/results/heads.md
    python benchmarks/heads_speed.py --quick    # smoke run (fewer repeats, small configs)

    python benchmarks/heads_speed.py --threads 1,2   # both thread counts (issue 16 grid)

Targets (issue 16): lmdl <= 1.5x plain at every K of the grid, B = 256, d in {128, 512},
1 and 2 threads, no step at a K threshold; bce-u and the normalized heads <= 1.3x.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from unimargin import build_head, list_heads
from unimargin._native import lmdl_kernel, lmdl_op
from unimargin.heads import bce as bce_head
from unimargin.heads.lmdl import head as lmdl_head

K_GRID = (10, 32, 64, 65, 100, 256, 1000, 10000)
CONFIGS = [(256, K, d) for d in (128, 512) for K in K_GRID]
QUICK = [(256, 10, 128), (256, 100, 128)]
LOOP_MAX_K = 1000
# where lmdl's two compiled steps trade places: the all-classes kernel (K <= FUSED_MAX_K) and
# the present-class step (any K); PRESENT_MIN_K in heads/lmdl/head.py is the chosen crossover
CROSSOVER = [(256, K, d) for d in (128, 512) for K in (10, 16, 24, 32, 48, 64)]


def lmdl_loop_loss(head, f, y):
    """lmdl loss with a Python loop over the classes of the batch (reference shape)."""
    W, b = head.weight, head.bias
    ce = F.cross_entropy(F.linear(f, W, b), y)
    compact, margin, reg = [], [], []
    for c in torch.unique(y).tolist():
        fc = f[y == c]
        batch_mean = fc.mean(0)
        m = (1 - head.momentum) * batch_mean + head.momentum * head.centroids[c] if head.seen[c] else batch_mean
        compact.append(F.relu((fc - m).norm(dim=1) - head.delta_v).pow(2).mean())
        diff = W[c] - W
        dist = (diff @ batch_mean + b[c] - b) / diff.norm(dim=1).clamp_min(1e-12)
        hinge = F.relu(head.delta_d - dist)
        others = torch.ones(W.shape[0], dtype=torch.bool)
        others[c] = False
        margin.append(hinge[others].max())
        reg.append(m.norm())
        with torch.no_grad():
            head.centroids[c] = m.detach()
            head.seen[c] = True
    disc = (head.compact_weight * torch.stack(compact).mean() + head.margin_weight * torch.stack(margin).mean()
            + head.reg_weight * torch.stack(reg).mean())
    return ce + head.disc_weight * disc


FLOORS = ("floor-lmdl", "floor-norm", "floor-bce")


def floor_steps(feats, labels, K, d, make_step) -> dict:
    """Arithmetic floors: plain linear + CE plus only the extra passes a head cannot avoid,
    in native PyTorch ops (no head code):

    - floor-lmdl: + the P×K×d Gram W_p Wᵀ over the P present classes (no gradient), the one
      extra product of the present-class step (its other work is O(B·d + B·K + P·K));
    - floor-norm: the CE of s·cos (normalise f (B×d) and W (K×d), forward and backward,
      then the same matmul and CE as plain): normface's arithmetic;
    - floor-bce: linear + mean over B·K of softplus (one transcendental pass, like plain's
      log-softmax) minus the positive logits: bce's arithmetic without the signed copy."""
    linear, wn, bl = torch.nn.Linear(d, K), torch.nn.Linear(d, K, bias=False), torch.nn.Linear(d, K, bias=False)
    present = torch.unique(labels)

    def lmdl_floor(f):
        with torch.no_grad():
            torch.mm(linear.weight.index_select(0, present), linear.weight.t())
        return F.cross_entropy(linear(f), labels)

    def norm_floor(f):
        return F.cross_entropy(16.0 * F.linear(F.normalize(f, dim=1), F.normalize(wn.weight, dim=1)), labels)

    def bce_floor(f):
        z = bl(f)
        return (F.softplus(z).sum() - z.gather(1, labels[:, None]).sum()) / f.shape[0]

    return {"floor-lmdl": make_step(lmdl_floor, linear), "floor-norm": make_step(norm_floor, wn),
            "floor-bce": make_step(bce_floor, bl)}


def _timed(step) -> tuple[float, float]:
    """(wall, CPU) seconds of one call. CPU time (all threads of this process) is not
    inflated when other jobs preempt us, which on a loaded machine hits long steps more
    often than short ones and so biases wall-clock ratios upwards."""
    w0, c0 = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - w0, time.process_time() - c0


def bench_config(B, K, d, repeats, warmup, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, d, generator=gen)
    labels = torch.randint(0, K, (B,), generator=gen)
    linear = torch.nn.Linear(d, K)

    def make_step(loss_fn, module):
        def step():
            module.zero_grad(set_to_none=True)
            f = feats.clone().requires_grad_()
            loss_fn(f).backward()
        return step

    steps = {"plain": make_step(lambda f: F.cross_entropy(linear(f), labels), linear)}
    heads = {}
    for name in list_heads():
        heads[name] = build_head(name, K, d)
        heads[name].validate = False  # the engine's steady state (it validates the first step of each epoch)
        steps[name] = make_step(lambda f, h=heads[name]: h(f, labels).loss, heads[name])
    lmdl_off = build_head("lmdl", K, d)
    lmdl_off.validate = False

    def lmdl_pytorch(f):
        with lmdl_kernel.disabled():
            return lmdl_off(f, labels).loss

    steps["lmdl-pytorch"] = make_step(lmdl_pytorch, lmdl_off)
    lmdl_py = build_head("lmdl", K, d)
    lmdl_py.validate = False

    def lmdl_no_cpp(f):
        with lmdl_op.disabled():
            return lmdl_py(f, labels).loss

    steps["lmdl-no-c++"] = make_step(lmdl_no_cpp, lmdl_py)
    steps.update(floor_steps(feats, labels, K, d, make_step))
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    for r in range(warmup + repeats):
        for k, step in steps.items():  # round-robin: load spikes hit every method
            tw, tc = _timed(step)
            if r >= warmup:
                wall[k].append(tw)
                cpu[k].append(tc)
    if K <= LOOP_MAX_K:  # after the round-robin: its allocations would leave the next method's cache cold
        loop_head, lmdl_head_ = build_head("lmdl", K, d), heads["lmdl"]
        pair = {"lmdl-loop": make_step(lambda f: lmdl_loop_loss(loop_head, f, labels), loop_head),
                "lmdl-again": make_step(lambda f: lmdl_head_(f, labels).loss, lmdl_head_)}
        times = {k: [] for k in pair}
        for r in range(1 + max(3, repeats // 2)):
            for k, step in pair.items():
                tw, _ = _timed(step)
                if r:
                    times[k].append(tw)
        wall["lmdl-loop"] = statistics.median(times["lmdl-loop"]) / statistics.median(times["lmdl-again"])
        cpu["lmdl-loop"] = [0.0]
    # lmdl-loop: already the ratio loop / lmdl of its own paired run
    return ({k: (v if k == "lmdl-loop" else statistics.median(v)) for k, v in wall.items()},
            {k: statistics.median(v) for k, v in cpu.items()})


def _head_rotation(B, K, d, repeats, warmup, extra=None, head_name="lmdl") -> dict:
    """Median wall seconds of plain, the shipped head ``head_name`` and ``extra(head,
    labels)``'s variants ({name: loss_fn}), timed round-robin one step each (the rotation
    of :func:`bench_crossover`, :func:`bench_pairs` and :func:`bench_bce_crossover`)."""
    gen = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(B, d, generator=gen), torch.randint(0, K, (B,), generator=gen)
    linear, head = torch.nn.Linear(d, K), build_head(head_name, K, d)
    head.validate = False

    def step(module, loss_fn):
        module.zero_grad(set_to_none=True)
        loss_fn(feats.clone().requires_grad_()).backward()

    variants = {"plain": (linear, lambda f: F.cross_entropy(linear(f), labels)),
                head_name: (head, lambda f: head(f, labels).loss)}
    variants.update({k: (head, fn) for k, fn in (extra(head, labels) if extra else {}).items()})
    times = {k: [] for k in variants}
    for r in range(warmup + repeats):
        for k, (module, loss_fn) in variants.items():
            tw, _ = _timed(lambda: step(module, loss_fn))
            if r >= warmup:
                times[k].append(tw)
    return {k: statistics.median(v) for k, v in times.items()}


def _forced_steps(head, labels) -> dict:
    """The crossover variants: the present step forced at every K (C++ operator, Python
    Function) and the all-classes kernel forced (thresholds set for this call only)."""
    def forced(f, min_k, cpp=True):
        saved = lmdl_head.PRESENT_MIN_K, lmdl_head.PRESENT_MIN_K_PYTHON
        lmdl_head.PRESENT_MIN_K = lmdl_head.PRESENT_MIN_K_PYTHON = min_k
        try:
            if cpp:
                return head(f, labels).loss
            with lmdl_op.disabled():
                return head(f, labels).loss
        finally:
            lmdl_head.PRESENT_MIN_K, lmdl_head.PRESENT_MIN_K_PYTHON = saved

    return {"forced": lambda f: forced(f, 0), "forced-py": lambda f: forced(f, 0, cpp=False),
            "small": lambda f: forced(f, 1 << 30)}


def bench_crossover(threads_list, repeats=9):
    """Rows (threads, B, K, d, plain ms, lmdl/plain, present-step/plain (C++ operator),
    present-step/plain (Python Function), all-classes-kernel/plain)."""
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for B, K, d in CROSSOVER:
            med = _head_rotation(B, K, d, repeats, warmup=1, extra=_forced_steps)
            rows.append((threads, B, K, d, med["plain"] * 1e3, med["lmdl"] / med["plain"],
                         med["forced"] / med["plain"], med["forced-py"] / med["plain"], med["small"] / med["plain"]))
            print(f"crossover threads={threads} B={B} K={K} d={d} done", flush=True)
    return rows


def bench_pairs(threads_list, repeats=15):
    """Rows (threads, B, K, d, plain ms, lmdl/plain): plain and the shipped lmdl head alone,
    alternating step by step over the whole K grid (each one's caches as warm as a training
    loop of the layer would leave them; the main table's 16-method rotation leaves them cold)."""
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for B, K, d in CONFIGS:
            med = _head_rotation(B, K, d, repeats, warmup=2)
            rows.append((threads, B, K, d, med["plain"] * 1e3, med["lmdl"] / med["plain"]))
    return rows


def _bce_forced_steps(head, labels) -> dict:
    """bce-u with BCEStep forced on and off (BCE_STEP_MIN_ELEMENTS set for this call only)
    and the floor-bce arithmetic on the head's own weight."""
    def forced(f, min_elements):
        saved = bce_head.BCE_STEP_MIN_ELEMENTS
        bce_head.BCE_STEP_MIN_ELEMENTS = min_elements
        try:
            return head(f, labels).loss
        finally:
            bce_head.BCE_STEP_MIN_ELEMENTS = saved

    def floor(f):
        z = F.linear(f, head.weight)
        return (F.softplus(z).sum() - z.gather(1, labels[:, None]).sum()) / f.shape[0]

    return {"step": lambda f: forced(f, 0), "formula": lambda f: forced(f, 1 << 62), "floor": floor}


def bench_bce_crossover(threads_list, repeats=15):
    """Rows (threads, B, K, d, plain ms, bce-u/plain as shipped, with BCEStep, with the
    formula's autograd, floor-bce/plain) over the whole K grid."""
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for B, K, d in CONFIGS:
            med = _head_rotation(B, K, d, repeats, warmup=2, extra=_bce_forced_steps, head_name="bce-u")
            rows.append((threads, B, K, d, med["plain"] * 1e3, *(med[k] / med["plain"]
                                                                 for k in ("bce-u", "step", "formula", "floor"))))
            print("bce crossover | " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v)
                                                   for v in rows[-1]), flush=True)
    return rows


def format_bce_crossover(rows) -> str:
    if not rows:
        return "(not measured: --quick)"
    lines = ["| threads | B | K | d | B·K | plain (ms) | bce-u (as shipped) | BCEStep | formula (autograd) "
             "| floor-bce |", "|---|---|---|---|---|---|---|---|---|---|"]
    for threads, B, K, d, plain_ms, shipped, step, formula, floor in rows:
        lines.append(f"| {threads} | {B} | {K} | {d} | {B * K} | {plain_ms:.2f} | {shipped:.2f} | {step:.2f} "
                     f"| {formula:.2f} | {floor:.2f} |")
    return "\n".join(lines)


def format_pairs(rows) -> str:
    if not rows:
        return "(not measured: --quick)"
    grid = sorted({(r[2]) for r in rows})
    lines = ["| threads | d | " + " | ".join(f"K = {k}" for k in grid) + " |", "|---|---|" + "---|" * len(grid)]
    for threads in sorted({r[0] for r in rows}):
        for d in sorted({r[3] for r in rows}):
            cells = {r[2]: r[5] for r in rows if r[0] == threads and r[3] == d}
            lines.append(f"| {threads} | {d} | " + " | ".join(f"{cells[k]:.2f}" for k in grid) + " |")
    return "\n".join(lines)


def format_crossover(rows) -> str:
    if not rows:
        return "(not measured: --quick)"
    lines = ["| threads | B | K | d | plain (ms) | lmdl (as shipped) | present step, C++ operator "
             "| present step, Python Function | all-classes kernel |",
             "|---|---|---|---|---|---|---|---|---|"]
    for threads, B, K, d, plain_ms, shipped, forced, forced_py, small in rows:
        lines.append(f"| {threads} | {B} | {K} | {d} | {plain_ms:.2f} | {shipped:.2f} | {forced:.2f} "
                     f"| {forced_py:.2f} | {small:.2f} |")
    return "\n".join(lines)


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 small configs, 3 repeats")
    ap.add_argument("--threads", default="1",
                    help="comma-separated torch thread counts, e.g. 1,2 (each a full table)")
    ap.add_argument("--repeats", type=int, default=None, help="round-robin repetitions (default 7)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter; cpu: process CPU time (all threads), robust on a loaded "
                         "machine with 1 thread (preemption is not counted), not comparable across thread counts")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "heads.md"))
    ap.add_argument("--bce-crossover", action="store_true",
                    help="only the bce-u table (BCEStep vs the formula's autograd), printed, nothing written")
    args = ap.parse_args(argv)
    threads_list = [int(t) for t in args.threads.split(",")]
    if args.bce_crossover:
        print(format_bce_crossover(bench_bce_crossover(threads_list)))
        return
    torch.manual_seed(0)
    configs = QUICK if args.quick else CONFIGS
    names = list_heads() + ["lmdl-no-c++", "lmdl-pytorch", *FLOORS]
    repeats = args.repeats or (3 if args.quick else 7)
    sections = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        load_start = _load()
        lines = ["| B | K | d | plain (ms) | " + " | ".join(names) + " | lmdl speed-up vs loop |",
                 "|" + "---|" * (5 + len(names))]
        for B, K, d in configs:
            wall, cpu = bench_config(B, K, d, repeats=repeats, warmup=2)
            if args.clock == "cpu":
                wall = {**cpu, "lmdl-loop": wall.get("lmdl-loop")} if "lmdl-loop" in wall else cpu
            loop = f"{wall['lmdl-loop']:.1f}x" if "lmdl-loop" in wall else "n/a (K > 1000)"
            lines.append(f"| {B} | {K} | {d} | {wall['plain'] * 1e3:.2f} | "
                         + " | ".join(f"{wall[n] / wall['plain']:.2f}" for n in names) + f" | {loop} |")
            print(lines[-1], flush=True)
        sections.append(f"### {threads} thread(s): load (1/5/15 min) {load_start} at the start, {_load()} at the end\n\n"
                        + "\n".join(lines))
    crossover = [] if args.quick else bench_crossover(threads_list)
    pairs = [] if args.quick else bench_pairs(threads_list)
    bce_rows = [] if args.quick else bench_bce_crossover(threads_list)
    meta = (f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, median of {repeats} "
            f"round-robin repetitions after 2 warm-up rounds, {'--quick, ' if args.quick else ''}"
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    body = "\n\n".join(sections)
    doc = f"""# Head speed: forward + backward, ratio to plain nn.Linear + F.cross_entropy

Generated by `python benchmarks/heads_speed.py --threads {args.threads} --clock {args.clock}` ({meta}).
Cells are median(head {args.clock} time) / median(plain {args.clock} time), every method timed round-robin
in the same process (1.00 = as fast as the plain layer); `plain (ms)` is the reference time.
The last column is lmdl's speed-up over a per-class Python loop reference (K <= 1000 only),
timed in its own round-robin after the main one (the loop's allocations leave the next
method's caches cold, which made plain look slower when it ran in the same rotation).
The machine is shared with other jobs (2 cores): the load average is given per table.

Heads run with `validate=False`, the engine's steady state (it checks input values on the
first step of each epoch only: two `aminmax` reads). `lmdl` is the head as shipped
(dispatch `step_path` in heads/lmdl/head.py; CPU kernel: {lmdl_kernel.status()});
C++ operator: {lmdl_op.status()}. `lmdl-no-c++` is the same head without the C++ operator
(`lmdl_op.disabled()`: the present step as a Python autograd.Function over the C kernel, what
runs without a C++ compiler); `lmdl-pytorch` the same head with the kernels disabled
(`lmdl_kernel.disabled()`: what runs on a GPU or without a C compiler). `floor-*` are arithmetic floors in plain PyTorch ops
(`floor_steps`): plain + the lmdl Gram W_p Wᵀ; the CE of s·cos (normalising f and W);
linear + a softplus BCE.

{body}

lmdl's compiled steps around the crossovers `PRESENT_MIN_K` (C++ operator) and
`PRESENT_MIN_K_PYTHON` (median of 9, ratio to plain in the same run): the present-class step
(any K) as the C++ operator and as the Python `LMDLPresentStep`, and the all-classes kernel
(`LMDLFusedStep`, K <= 64):

{format_crossover(crossover)}

lmdl (as shipped) against plain alone, the two alternating step by step (median of 15; a
2-method rotation keeps each one's caches as warm as a training loop of the bare layer
would, the 16-method rotation above leaves them colder, which costs the head with the
larger working set more):

{format_pairs(pairs)}

bce-u's two bit-identical paths around `BCE_STEP_MIN_ELEMENTS` (heads/bce.py; B·K from
which `BCEStep` runs) against plain, with floor-bce on the head's own weight (median of 15,
5-method rotation):

{format_bce_crossover(bce_rows)}
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
