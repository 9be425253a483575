"""`compare` / `sweep` progress and output-directory safety (issue 12): "run k/N" as each run
starts, per-epoch validation lines with elapsed and remaining time, rounded numbers, a tqdm
bar only on a terminal, and an existing experiment directory refused without --reuse or
--overwrite."""

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
from experiment_procs import cli_env, run_cli

from unimargin.experiments import runner
from unimargin.experiments.runner import Progress, RunTask, format_duration, metrics_text
from unimargin.report.records import RunRecord

TINY = ["--dataset", "mnist1d", "--seeds", "2", "--epochs", "2", "--limit-train", "300", "--limit-test", "100",
        "--batch-size", "64"]
LONG_FLOAT = re.compile(r"\d\.\d{5,}")  # e.g. 0.6666666666666666


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_compare_prints_run_k_of_n_epochs_and_rounded_results(tmp_path, jobs):
    out = tmp_path / "cmp"
    proc = run_cli(["compare", "--heads", "softmax,bce-u", *TINY, "--jobs", jobs, "--out", out])
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    labels = ["softmax seed 0", "bce-u seed 0", "softmax seed 1", "bce-u seed 1"]
    for k, label in enumerate(labels, start=1):
        assert f"run {k}/4: {label}\n" in err, err
        for epoch in (1, 2):
            line = re.search(rf"^run {k}/4 {re.escape(label)}: epoch {epoch}/2, val sw (\d+\.\d\d)% uni (\d+\.\d\d)%"
                             r", loss \d+\.\d{4} \(elapsed [\dms.]+(, ~[\dms.]+ left)?\)$", err, re.M)
            assert line, (label, epoch, err)
        done = re.search(rf"^run {k}/4 {re.escape(label)}: completed in [\dms.]+, test sw (\d+\.\d\d)% "
                         rf"uni (\d+\.\d\d)% \((\d)/4 runs done, elapsed [\dms.]+, ~[\dms.]+ left\)$", err, re.M)
        assert done, (label, err)
        # the printed numbers are the records' numbers, rounded
        record = next(r for r in json.loads((out / "records.json").read_text())
                      if f"{r['head']} seed {r['seed']}" == label)
        assert float(done.group(1)) == pytest.approx(100 * record["final"]["sw"], abs=0.005)
        assert float(done.group(2)) == pytest.approx(100 * record["final"]["uni"], abs=0.005)
        # the per-epoch lines are the validation split of metrics.jsonl
        last = json.loads((out / record["out"] / "metrics.jsonl").read_text().splitlines()[-1])
        assert float(line.group(1)) == pytest.approx(100 * last["val"]["sw"], abs=0.005)
    # a line per run start precedes that run's epochs; no unrounded floats anywhere
    assert err.index("run 4/4: bce-u seed 1") < err.index("run 4/4 bce-u seed 1: epoch 1/2")
    assert not LONG_FLOAT.search(err), LONG_FLOAT.search(err)
    assert not re.search(r"\r|\x1b\[", err)  # no bar when stderr is not a terminal


def test_existing_directory_is_refused_without_reuse_or_overwrite(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--heads", "softmax", "--seeds", "1", "--epochs", "1", "--limit-train", "200",
            "--limit-test", "100", "--jobs", "1", "--out", out]
    assert run_cli(args).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    refused = run_cli(args)
    assert refused.returncode == 2
    message = refused.stderr.strip().splitlines()[-1]
    assert str(out) in message and "--reuse" in message and "--overwrite" in message, message
    assert "run 1/1" not in refused.stderr  # refused before anything trains
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    both = run_cli([*args, "--reuse", "--overwrite"])
    assert both.returncode == 2 and "--reuse or --overwrite, not both" in both.stderr
    overwritten = run_cli([*args, "--overwrite"])
    assert overwritten.returncode == 0 and "run 1/1: softmax seed 0" in overwritten.stderr
    reused = run_cli([*args, "--reuse"])
    assert reused.returncode == 0 and "reused (completed earlier)" in reused.stderr
    # sweep refuses its directory the same way; a directory holding other files is fine
    sweep = ["sweep", "--head", "lmdl", "--param", "delta_d", "--values", "1.0", "--seeds", "1", "--epochs", "1",
             "--limit-train", "200", "--limit-test", "100", "--jobs", "1"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run_cli([*sweep, "--out", other]).returncode == 0
    again = run_cli([*sweep, "--out", other])
    assert again.returncode == 2 and "already holds a sweep" in again.stderr and str(other) in again.stderr
    assert (other / "notes.txt").read_text() == "mine"


def test_tqdm_bar_on_a_terminal(tmp_path):
    pytest.importorskip("tqdm")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "unimargin", "compare", "--heads", "softmax", *TINY, "--jobs", "1",
                             "--out", str(tmp_path / "cmp")], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=cli_env(), close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=600) == 0
    text = b"".join(chunks).decode("utf-8", "replace")
    assert "run 1/2: softmax seed 0" in text and "run 2/2 softmax seed 1: completed" in text
    assert "epoch/s" in text or "epoch]" in text or "s/epoch" in text, text  # the bar's rate
    assert "\r" in text
    assert not re.search(r"run \d/2 softmax seed \d: epoch \d/2,", text)  # the bar replaces epoch lines


# --------------------------------------------------------------------------- unit level
def _tasks(epochs=(4, 4, 2)):
    return [RunTask(options={"epochs": e}, head="h", seed=i, head_params={}, run_dir=f"r{i}", label=f"h seed {i}")
            for i, e in enumerate(epochs)]


def test_remaining_time_is_rate_since_first_start_times_epochs_left(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])
    lines = []
    progress = Progress(_tasks(), lines.append)
    clock[0] = 110.0  # 10 s of worker start-up
    progress.event(0, "start", None)
    assert lines[-1] == "run 1/3: h seed 0"
    clock[0] = 112.0
    progress.event(0, "epoch", {"epoch": 1, "val": {"sw": 0.5, "uni": 2 / 3}, "loss": 1.23456, "status": "ok"})
    # 1 epoch in 2 s since the first start, 9 epochs left -> 18 s; elapsed counts from the grid start
    assert lines[-1] == "run 1/3 h seed 0: epoch 1/4, val sw 50.00% uni 66.67%, loss 1.2346 (elapsed 12.0s, ~18.0s left)"
    # a reused run counts as done: its epochs leave the estimate
    progress.finished(2, RunRecord(head="h", seed=2, status="completed", final={"sw": 0.25, "uni": 0.125},
                                   reused=True))
    assert lines[-1] == ("run 3/3 h seed 2: reused (completed earlier), test sw 25.00% uni 12.50% "
                         "(1/3 runs done, elapsed 12.0s, ~14.0s left)")
    # a run that diverges after 1 epoch: its 3 remaining epochs are dropped too
    progress.finished(0, RunRecord(head="h", seed=0, status="diverged", final={}, runtime_s=2.0))
    assert lines[-1] == "run 1/3 h seed 0: diverged in 2.0s, test sw - uni - (2/3 runs done, elapsed 12.0s, ~8.0s left)"


def test_formatting_helpers():
    assert format_duration(8.44) == "8.4s" and format_duration(125) == "2m05s" and format_duration(3725) == "1h02m"
    assert metrics_text({"sw": 2 / 3, "uni": None}, "val") == "val sw 66.67% uni -"
    assert metrics_text({"sw": float("nan"), "uni": 1.0}, "test") == "test sw - uni 100.00%"
