"""runner.run_tasks: results independent of --jobs and of the order runs start in, the
idle-core hook (``on_idle``), and compare's choice of the plotted runs from partial grids."""

import itertools
import json

import pytest

from unimargin.experiments.compare import plotted_runs
from unimargin.experiments.runner import RunTask, run_tasks
from unimargin.report.records import COMPLETED, FAILED, RunRecord

TINY = dict(dataset="digits", epochs=2, limit_train=300, limit_test=200, batch_size=64, quiet=True,
            num_threads=1)
RESULT_KEYS = ("status", "epochs_completed", "selected_epoch", "final", "final_val", "per_class")


def _tasks(root):
    grid = [(0, "softmax"), (0, "lmdl"), (0, "bce-u"), (1, "softmax"), (1, "lmdl")]
    return [RunTask(options=dict(TINY), head=head, seed=seed, head_params={},
                    run_dir=str(root / head / f"seed{seed}"), label=f"{head} seed {seed}")
            for seed, head in grid]


def _results(tasks):
    out = {}
    for task in tasks:
        with open(f"{task.run_dir}/summary.json") as fh:
            summary = json.load(fh)
        out[task.label] = {k: summary.get(k) for k in RESULT_KEYS}
    return out


def test_results_do_not_depend_on_jobs_or_start_order_and_on_idle_runs_once(tmp_path):
    """5 runs with --jobs 1 (grid order) and --jobs 2 started in reverse order (a cost model
    that ranks the grid backwards): every summary.json result equal bit for bit; with 2
    workers the idle hook runs exactly once, while a run still trains."""
    serial = _tasks(tmp_path / "serial")
    idle_calls = []
    records = run_tasks(serial, 1, lambda i, r: None, lambda m: None, on_idle=lambda: idle_calls.append("serial"))
    assert [r.status for r in records] == [COMPLETED] * 5
    assert idle_calls == []  # one worker never idles before the end

    parallel = _tasks(tmp_path / "parallel")
    finished = []

    def on_idle():
        idle_calls.append(len(finished))

    records = run_tasks(parallel, 2, lambda i, r: finished.append(i), lambda m: None,
                        cost=lambda task: parallel.index(task), on_idle=on_idle)
    assert [r.status for r in records] == [COMPLETED] * 5
    assert finished[0] in (3, 4) and sorted(finished) == list(range(5))  # started from the back
    assert len(idle_calls) == 1 and 1 <= idle_calls[0] <= 4  # after a run finished, before the last
    assert _results(parallel) == _results(serial)


def _record(head, seed, ok=True):
    return RunRecord(head=head, seed=seed, status=COMPLETED if ok else FAILED)


def _brute_force_plotted(tasks, records):
    """The rule on a complete grid, written out: per head, its first run in grid order
    that finished ok."""
    chosen = []
    for index, task in enumerate(tasks):
        if records[index].ok and not any(tasks[j].head == task.head for j in chosen):
            chosen.append(index)
    return chosen


@pytest.mark.parametrize("failed", [(), (0,), (0, 3), (1, 4, 7), (2, 5, 8)])
def test_plotted_runs_from_partial_grids_never_differ_from_the_full_grid(failed):
    heads = ["softmax", "lmdl", "bce-u"]
    tasks = [RunTask(options={}, head=h, seed=s, head_params={}, run_dir=f"r/{h}/{s}")
             for s in range(3) for h in heads]
    records = {i: _record(t.head, t.seed, ok=i not in failed) for i, t in enumerate(tasks)}
    full = plotted_runs(tasks, records)
    assert full == _brute_force_plotted(tasks, records)
    for size in range(len(tasks) + 1):
        for done in itertools.combinations(range(len(tasks)), size):
            partial = plotted_runs(tasks, {i: records[i] for i in done})
            assert set(partial) <= set(full), done
            assert partial == sorted(partial)
