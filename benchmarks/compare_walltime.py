"""Wall time of ``unimargin compare`` and where it goes (issue 16, "compare wall time").

Runs one or more compares as subprocesses (``python -m unimargin compare ...`` with
``PYTHONPATH=<src>``), interleaved A B A B when several sources are given (the machine is
shared: interleaving spreads the load over all of them), and prints for each invocation:

- wall time (launch to exit) and the CPU time of the process tree (user + sys, from
  ``getrusage(RUSAGE_CHILDREN)``; less sensitive to the load than the wall time);
- the load average (/proc/loadavg) before and after;
- a breakdown read from the run directories (``metrics.jsonl``, ``summary.json``) and from
  the timestamps of the compare's progress lines on stderr (read as they arrive, so every
  timestamp is within the parent's 0.2 s event poll):

  =========================  ===========================================================
  parent start + setup       launch -> ``[grid]`` line (interpreter, imports, data, configs)
  worker start               ``[grid]`` -> first ``run k/N: LABEL`` line (spawn + imports)
  training steps             sum over runs of ``train_time_s`` (metrics.jsonl)
  per-epoch evaluation       sum over runs of ``time_s - train_time_s``
  checkpoint writes          (epochs + 1) per run x the time of one ``save_checkpoint`` of
                             that run's last.pt payload, measured here after the compare
  run setup + final eval     ``runtime_s`` - the three above (data, model, optimiser: the
                             first run of a worker imports ``torch._dynamo``; the test split)
  between runs               time a worker spends outside ``train()`` (record, queue)
  one core idle              time during which exactly one run trains (``jobs`` = 2)
  outputs + report + exit    last ``completed`` line -> exit (test outputs for the plots,
                             report.md/html, PNG plots, interpreter exit)
  =========================  ===========================================================

  The sums over runs are CPU-side work of the workers (two run at once), the other rows
  are wall time of the parent.
- whether every run's results (summary.json ``final``, ``final_val``, ``per_class``,
  ``selected_epoch``, ``epochs_completed``, ``status``) are equal bit for bit between the
  invocations (they must be: runs are seeded and independent of ``--jobs`` and order).

    python benchmarks/compare_walltime.py                               # this tree, once
    python benchmarks/compare_walltime.py --src base=/tmp/base/src --src new=src --reps 2
    python benchmarks/compare_walltime.py --args "--jobs 1"             # extra compare flags
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULT_KEYS = ("status", "epochs_completed", "selected_epoch", "final", "final_val", "per_class")
_START = re.compile(r"^run (\d+)/(\d+): (.+)$")
_END = re.compile(r"^run (\d+)/(\d+) (.+?): (completed|diverged|failed|reused)")


def loadavg() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run_compare(src: str, out: Path, args: list[str]) -> dict:
    """One compare in a subprocess; its stderr lines with their arrival times."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    command = [sys.executable, "-m", "unimargin", "compare", "--out", str(out), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, bufsize=1)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = proc.wait()
    reader.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        tail = "\n".join(text for _, text in lines[-20:])
        raise SystemExit(f"compare failed ({code}): {shlex.join(command)}\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "lines": lines, "load": (load_before, loadavg()), "out": out}


def checkpoint_write_s(path: Path, reps: int = 3) -> float:
    """Median time of one ``save_checkpoint`` of this payload (digest, torch.save, atomic write)."""
    from unimargin.train.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(path)
    payload = {k: v for k, v in payload.items() if k not in ("format", "version", "sha256")}
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "last.pt"
        for _ in range(reps):
            t0 = time.perf_counter()
            save_checkpoint(payload, target)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def breakdown(result: dict, jobs: int) -> dict:
    """The rows of the module docstring's table for one invocation."""
    out, lines = result["out"], result["lines"]
    grid_t = next((t for t, text in lines if text.startswith("[grid]")), 0.0)
    starts, ends = {}, {}
    for t, text in lines:
        if (m := _START.match(text)) is not None:
            starts[int(m.group(1))] = t
        elif (m := _END.match(text)) is not None:
            ends[int(m.group(1))] = t
    records = json.loads((out / "records.json").read_text())
    train_s = eval_s = ckpt_s = runtime_s = 0.0
    results = {}
    for record in records:
        run_dir = out / record["out"]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        summary = json.loads((run_dir / "summary.json").read_text())
        results[f"{record['head']} seed {record['seed']}"] = {k: summary.get(k) for k in RESULT_KEYS}
        train_s += sum(r.get("train_time_s", 0.0) for r in rows)
        eval_s += sum(r["time_s"] - r.get("train_time_s", r["time_s"]) for r in rows)
        runtime_s += summary["runtime_s"]
        ckpt_s += (len(rows) + 1) * checkpoint_write_s(run_dir / "checkpoints" / "last.pt")
    # concurrency from the start/end line times: time with exactly one run training
    events = sorted([(t, 1) for t in starts.values()] + [(t, -1) for t in ends.values()])
    busy, previous, one_idle = 0, None, 0.0
    for t, step in events:
        if previous is not None and busy == 1 and jobs > 1:
            one_idle += t - previous
        busy += step
        previous = t
    first_start = min(starts.values()) if starts else grid_t
    last_end = max(ends.values()) if ends else result["wall"]
    in_runs = sum(ends[i] - starts[i] for i in ends if i in starts)
    return {
        "wall": result["wall"], "cpu": result["cpu"], "load": result["load"],
        "parent start + setup": grid_t,
        "worker start": first_start - grid_t,
        "training steps": train_s,
        "per-epoch evaluation": eval_s,
        "checkpoint writes": ckpt_s,
        "run setup + final eval": runtime_s - train_s - eval_s - ckpt_s,
        "between runs": in_runs - runtime_s,
        "one core idle": one_idle,
        "outputs + report + exit": result["wall"] - last_end,
        "runs": len(records), "results": results,
    }


ROWS = ("parent start + setup", "worker start", "training steps", "per-epoch evaluation",
        "checkpoint writes", "run setup + final eval", "between runs", "one core idle",
        "outputs + report + exit")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", action="append", default=None, metavar="NAME=DIR",
                    help="a source tree to run (PYTHONPATH); repeat to compare (default: this tree's src)")
    ap.add_argument("--reps", type=int, default=1, help="invocations per source, interleaved")
    ap.add_argument("--args", default="", help="extra compare flags, e.g. \"--jobs 1\"")
    ap.add_argument("--jobs", type=int, default=2, help="compare --jobs (default 2, compare's default)")
    ap.add_argument("--out", default=None, help="directory for the compares (default: a temporary one)")
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parent.parent / "src"
    sources = [s.split("=", 1) if "=" in s else (f"src{i}", s) for i, s in enumerate(args.src or [f"this={here}"])]
    extra = ["--jobs", str(args.jobs), *shlex.split(args.args)]
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="compare_walltime_"))
    table: dict[str, list[dict]] = {name: [] for name, _ in sources}
    for rep in range(args.reps):
        for name, src in sources:
            out = root / f"{name}_{rep}"
            result = run_compare(src, out, extra + ["--overwrite"])
            row = breakdown(result, args.jobs)
            table[name].append(row)
            print(f"{name} rep {rep}: wall {row['wall']:.1f} s, cpu {row['cpu']:.1f} s, load "
                  f"{row['load'][0]} -> {row['load'][1]}", file=sys.stderr, flush=True)

    print(f"compare flags: {shlex.join(extra)}; {args.reps} invocation(s) per source, interleaved; "
          f"outputs in {root}\n")
    header = "| | " + " | ".join(f"{n} rep {i}" for n, _ in sources for i in range(args.reps)) + " |"
    print(header)
    print("|" + "---|" * (1 + len(sources) * args.reps))
    cells = [r for n, _ in sources for r in table[n]]
    print("| load (1/5/15 min) before -> after | " + " | ".join(f"{r['load'][0]} -> {r['load'][1]}" for r in cells) + " |")
    print("| **wall (s)** | " + " | ".join(f"**{r['wall']:.1f}**" for r in cells) + " |")
    print("| CPU of the process tree (s) | " + " | ".join(f"{r['cpu']:.1f}" for r in cells) + " |")
    for key in ROWS:
        print(f"| {key} (s) | " + " | ".join(f"{r[key]:.1f}" for r in cells) + " |")
    print()
    reference = sources[0][0]
    ref_wall = statistics.median(r["wall"] for r in table[reference])
    ref_cpu = statistics.median(r["cpu"] for r in table[reference])
    for name, _ in sources:
        walls = [r["wall"] for r in table[name]]
        cpus = [r["cpu"] for r in table[name]]
        print(f"{name}: median wall {statistics.median(walls):.1f} s ({statistics.median(walls) / ref_wall:.3f}x "
              f"{reference}), median CPU {statistics.median(cpus):.1f} s "
              f"({statistics.median(cpus) / ref_cpu:.3f}x {reference})")
    first = cells[0]["results"]
    same = all(r["results"] == first for r in cells)
    print(f"\nresults (summary.json {', '.join(RESULT_KEYS)}) equal bit for bit across all "
          f"{len(cells)} invocations: {same}")
    if not same:
        for r in cells:
            for label, value in r["results"].items():
                if value != first.get(label):
                    print(f"  differs: {label}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
