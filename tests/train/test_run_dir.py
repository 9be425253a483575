"""Run-directory safety (docs/reliability.md): the lock, --overwrite that swaps only after
the new run's first checkpoint, and BatchNorm-safe batches."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from unimargin.train import TrainConfig, load_run, train
from unimargin.train.engine import auto_batch_size, plan_batches
from unimargin.train.run_dir import LOCK_FILE, RunDirectory, RunLock

SMALL = dict(dataset="mnist1d", limit_train=256, limit_test=100, batch_size=64, feat_dim=8,
             quiet=True, num_threads=1, warmup_epochs=0)

# A train process that holds its run open: it waits in the first epoch's callback until the
# file named by argv[2] exists (or 60 s), so a second process can meet it there.
_HOLDER = (
    "import os, sys, time\n"
    "from unimargin.train import TrainCallback, TrainConfig, train\n"
    "class Wait(TrainCallback):\n"
    "    def on_epoch_end(self, epoch, record):\n"
    "        open(sys.argv[2] + '.ready', 'w').close()\n"
    "        t = time.time()\n"
    "        while not os.path.exists(sys.argv[2]) and time.time() - t < 60:\n"
    "            time.sleep(0.05)\n"
    "train(TrainConfig(out=sys.argv[1], head='softmax', epochs=2, **{small!r}), callbacks=[Wait()])\n"
)


def _lines(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _start_holder(out, release):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER.format(small=SMALL), str(out), str(release)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(str(release) + ".ready"):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.05)
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out, release = tmp_path / "run", tmp_path / "release"
    holder = _start_holder(out, release)
    try:
        assert (out / LOCK_FILE).read_text().split()[0] == str(holder.pid)
        cli = [sys.executable, "-m", "unimargin", "train", "--head", "lmdl", "--epochs", "1",
               "--out", str(out), "--quiet", "--limit-train", "256", "--limit-test", "100"]
        for extra in ([], ["--overwrite"]):
            second = subprocess.run(cli + extra, capture_output=True, text=True, timeout=300)
            assert second.returncode == 2, second.stderr
            if extra:  # past the run-files check, the lock stops it
                assert f"being written by process {holder.pid}" in second.stderr
            else:
                assert "already holds a run" in second.stderr
    finally:
        release.touch()
        _, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, err
    records = _lines(out / "metrics.jsonl")      # one run's lines, not two interleaved
    assert [r["epoch"] for r in records] == [1, 2]
    assert load_run(out).config.head == "softmax" and load_run(out).epoch == 2
    assert not (out / LOCK_FILE).exists()         # released at the end


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    import socket

    (out / LOCK_FILE).write_text(f"{dead.pid} {socket.gethostname()} 1\n")
    summary = train(TrainConfig(out=str(out), head="softmax", epochs=1, **SMALL))
    assert summary["status"] == "completed" and not (out / LOCK_FILE).exists()
    # a live holder (this process, as another lock object) is refused with its PID
    lock = RunLock(str(out)).acquire()
    try:
        with pytest.raises(ValueError, match=f"being written by process {os.getpid()}"):
            RunLock(str(out)).acquire()
    finally:
        lock.release()
    # a holder on another host is never taken over (its PID means nothing here)
    (out / LOCK_FILE).write_text("1 some-other-host 1\n")
    with pytest.raises(ValueError, match="process 1 on host some-other-host"):
        RunLock(str(out)).acquire()


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), head="softmax", epochs=1, **SMALL))
    old_ckpt = (out / "checkpoints" / "last.pt").read_bytes()
    old_metrics = (out / "metrics.jsonl").read_text()
    # 1. a replacement that diverges in its first epoch leaves the old run as it was
    failed = train(TrainConfig(out=str(out), head="softmax", epochs=1, overwrite=True, lr=1e6,
                               **SMALL))
    assert failed["status"] == "diverged"
    assert (out / "checkpoints" / "last.pt").read_bytes() == old_ckpt
    assert (out / "metrics.jsonl").read_text() == old_metrics
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]   # no staging left behind
    # 2. a replacement SIGKILLed before its first checkpoint: the old run is still whole
    script = ("import os, signal, sys\n"
              "from unimargin.train import TrainCallback, TrainConfig, train\n"
              "class Kill(TrainCallback):\n"
              "    def before_checkpoint_replace(self, path, tmp):\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              f"train(TrainConfig(out=sys.argv[1], head='lmdl', epochs=1, overwrite=True, **{SMALL!r}),"
              " callbacks=[Kill()])\n")
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / "checkpoints" / "last.pt").read_bytes() == old_ckpt
    assert load_run(out).config.head == "softmax"
    # 3. a replacement that trains replaces the old run (the killed one's staging is gone too)
    done = train(TrainConfig(out=str(out), head="lmdl", epochs=1, overwrite=True, **SMALL))
    assert done["status"] == "completed" and load_run(out).config.head == "lmdl"
    assert [r["epoch"] for r in _lines(out / "metrics.jsonl")] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_kill_between_the_two_renames_of_a_swap_is_recovered(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), head="softmax", epochs=1, **SMALL))
    os.rename(out, tmp_path / f"run.old-{dead.pid}")       # the old run moved away ...
    (tmp_path / f"run.new-{dead.pid}").mkdir()              # ... the new one never moved in
    with pytest.raises(ValueError, match="already holds a run"):
        train(TrainConfig(out=str(out), head="lmdl", epochs=1, **SMALL))
    assert load_run(out).config.head == "softmax"           # the old run is back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_run_directory_swap_moves_the_lock_with_the_new_run(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("old: true\n")
    run_dir = RunDirectory(str(out), overwrite=True).open()
    assert run_dir.path != str(out) and (out / "config.yaml").exists()
    with open(run_dir.file("config.yaml"), "w") as fh:
        fh.write("new: true\n")
    run_dir.committed()
    assert run_dir.path == str(out) and (out / "config.yaml").read_text() == "new: true\n"
    assert (out / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    run_dir.close()
    assert not (out / LOCK_FILE).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="--resume: no checkpoint"):
        train(TrainConfig(out=str(tmp_path / "none"), resume=True, **SMALL))


@pytest.mark.parametrize("n,batch,world,want", [
    (10, 4, 1, [(0, 4), (4, 8), (8, 10)]),        # remainder 2: kept
    (9, 4, 1, [(0, 4), (4, 9)]),                  # remainder 1 joins the previous batch
    (4000, 129, 1, None),                         # the case: 31·129 + 1
    (11, 4, 2, [(0, 4), (4, 11)]),                # remainder 3 over 2 processes: shares 2, 1
    (12, 4, 2, [(0, 4), (4, 8), (8, 12)]),
])
def test_plan_batches_never_gives_a_process_one_sample(n, batch, world, want):
    bounds = plan_batches(n, batch, world, min_share=2)
    if want is not None:
        assert bounds == want
    covered = torch.cat([torch.arange(a, b) for a, b in bounds])
    assert torch.equal(covered, torch.arange(n))           # every sample once, in order
    for a, b in bounds:
        shares = torch.tensor_split(torch.arange(a, b), world)
        assert min(len(s) for s in shares) >= 2
    assert plan_batches(9, 4, 1, min_share=1) == [(0, 4), (4, 8), (8, 9)]  # no BatchNorm


def test_plan_batches_refuses_shares_below_two_before_training():
    with pytest.raises(ValueError, match="batch_size 3 over 2 process.*BatchNorm.*--batch-size >= 4"):
        plan_batches(100, 3, 2, min_share=2)
    with pytest.raises(ValueError, match="3 training samples over 2"):
        plan_batches(3, 8, 2, min_share=2)


def test_a_remainder_of_one_trains_with_batchnorm_backbones(tmp_path):
    # cnn1d has BatchNorm; 257 = 4·64 + 1 left one sample in the last batch (a crash before)
    cfg = dict(SMALL, limit_train=257)
    summary = train(TrainConfig(out=str(tmp_path / "r"), head="softmax", epochs=1, **cfg))
    assert summary["status"] == "completed"
    from unimargin.models import build_model

    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in build_model("cnn1d", (1, 40), 8).modules())


@pytest.mark.parametrize("n,want", [(10_000, 128), (1024, 128), (1000, 64), (43, 8), (3, 8)])
def test_auto_batch_size(n, want):
    assert auto_batch_size(n) == want


def test_small_data_adapts_the_defaults_and_warns_about_set_values(tmp_path, capsys):
    cfg = dict(SMALL, quiet=False, batch_size=None, limit_train=48, warmup_epochs=None)
    summary = train(TrainConfig(out=str(tmp_path / "a"), head="lmdl", epochs=2, **cfg))
    err = capsys.readouterr().err
    assert summary["config"]["batch_size"] == 8 and "batch size 8" in err
    assert summary["config"]["warmup_epochs"] == 0.4 and "warming up for 0.4 epochs" in err
    cfg.update(batch_size=64, warmup_epochs=3)
    summary = train(TrainConfig(out=str(tmp_path / "b"), head="lmdl", epochs=2, **cfg))
    err = capsys.readouterr().err
    assert summary["config"]["batch_size"] == 64 and "--batch-size 64 is at least the 48" in err
    assert summary["config"]["warmup_epochs"] == 3 and "covers the whole 2-epoch run" in err
