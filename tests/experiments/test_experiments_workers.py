"""`compare` owns its workers (issue 11 item 2), tested as a user meets it: start
`python -m unimargin compare --jobs 2`, wait until its worker processes train, kill the parent
(SIGKILL, SIGINT, SIGTERM), then no process of the compare is left, nothing more is written,
and a rerun with `--reuse` finishes the grid."""

import json
import signal
import sys
import time

import pytest
from experiment_procs import alive, descendants, run_cli, start_cli, start_time

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")

# 2 heads x 2 seeds, a few hundred samples: an epoch takes a fraction of a second.
GRID = ["compare", "--dataset", "mnist1d", "--heads", "softmax,lmdl", "--seeds", "2",
        "--limit-train", "300", "--limit-test", "200", "--batch-size", "64", "--jobs", "2"]


def _wait(condition, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the compare exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _epoch_lines(out) -> int:
    return sum(len(p.read_text().splitlines()) for p in out.glob("runs/*/seed*/metrics.jsonl"))


def _snapshot(out) -> dict:
    """Every file under the runs directory with its size and mtime."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.glob("runs/**/*") if p.is_file()}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "SIGINT", "SIGTERM"])
def test_killing_compare_leaves_no_worker_and_reuse_finishes(tmp_path, sig):
    out = tmp_path / "cmp"
    # SIGKILL: short runs, so the --reuse rerun is quick. SIGINT/SIGTERM: runs far longer than
    # the test waits, so a parent that let its workers finish their current run would fail.
    epochs = ["--epochs", "4" if sig == signal.SIGKILL else "400"]
    proc = start_cli([*GRID, *epochs, "--out", out], tmp_path / "log.txt", cwd=tmp_path)
    try:
        # Workers exist and one of them is inside a run (an epoch line is written).
        _wait(lambda: len(descendants(proc.pid)) >= 2 and _epoch_lines(out) >= 1, 120, "a worker training", proc)
        tree = {pid: start_time(pid) for pid in descendants(proc.pid)}
        tree = {pid: t for pid, t in tree.items() if t is not None}
        assert len(tree) >= 2, tree
        assert not (out / "report.md").exists()
        proc.send_signal(sig)
        proc.wait(timeout=60)
        # Every process the compare started ends (parent-death signal / the parent kills them).
        _wait(lambda: not alive(tree), 30, f"workers {alive(tree)} to end")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "log.txt").read_text()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode != 0, log
        assert "Traceback" not in log, log
    # Nothing trains into the directory any more.
    before = _snapshot(out)
    time.sleep(1.0)
    assert _snapshot(out) == before
    assert not (out / "report.md").exists()

    if sig != signal.SIGKILL:  # the rerun path is the same for every signal; once is enough
        return
    rerun = run_cli([*GRID, *epochs, "--out", out, "--reuse"], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    records = json.loads((out / "records.json").read_text())
    assert sorted((r["head"], r["seed"]) for r in records) == [("lmdl", 0), ("lmdl", 1), ("softmax", 0),
                                                               ("softmax", 1)]
    assert all(r["status"] == "completed" for r in records)
    assert (out / "report.md").exists() and (out / "report.html").exists()
    for record in records:  # each run has its whole history: no half-run kept as finished
        lines = (out / record["out"] / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
