"""The engine end to end on small MNIST-1D subsets: run files, reload, resume after SIGKILL
(bitwise), divergence, torchrun equality, output-directory protection."""

import json
import os
import subprocess
import sys

import pytest
import torch

from unimargin.heads import HeadOutput
from unimargin.train import (TrainConfig, compute_outputs, evaluate_outputs, load_run,
                             load_splits, train)
from unimargin.metrics import uniform_accuracy
from unimargin.train.guards import Diverged, check_step

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL = dict(dataset="mnist1d", limit_train=384, limit_test=200, batch_size=64, feat_dim=16,
             quiet=True, num_threads=1)
_VOLATILE = ("time_s", "train_time_s")


def _lines(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _strip_times(history):
    return [{k: v for k, v in r.items() if k not in _VOLATILE} for r in history]


def test_run_files_and_reload_reproduce_the_reported_metrics(tmp_path):
    out = str(tmp_path / "run")
    summary = train(TrainConfig(head="lmdl", epochs=2, out=out, **SMALL))
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert set(summary) >= {"status", "message", "epochs_completed", "runtime_s", "final",
                            "config", "out"}
    assert sorted(os.listdir(out)) == ["checkpoints", "config.yaml", "metrics.jsonl", "summary.json"]
    records = _lines(os.path.join(out, "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [1, 2] and all(r["status"] == "ok" for r in records)
    assert set(records[0]["train"]["terms"]) == {"ce", "compact", "margin", "reg"}
    for key in ("sw", "cw", "uni", "t_star", "sep_auc", "intra_class_distance", "centroid_margin_min"):
        assert key in records[-1]["val"]
    assert all("test" not in r for r in records)     # the test split is evaluated once
    assert summary["selected_epoch"] == 2 and summary["final_val"] == records[-1]["val"]
    with open(os.path.join(out, "summary.json")) as fh:
        assert json.load(fh)["final"] == summary["final"]
    assert summary["splits"] == {"n_train": 384, "n_val": 399, "n_test": 200, "n_unknown": 0}

    # The checkpoint holds exactly the evaluated state: recomputing gives the same numbers,
    # on validation per epoch and on test at the end (deployed at validation t*).
    run = load_run(out)
    assert run.epoch == 2 and run.config.head == "lmdl" and len(run.history) == 2
    assert run.selected_epoch == 2 and run.preprocessing["in_shape"] == [1, 40]
    assert run.preprocessing["dataset"] == "mnist1d" and len(run.preprocessing["classes"]) == 10
    splits = load_splits(run.config)
    _, val_scores = compute_outputs(run.model, run.head, splits.x_val)
    val_features, _ = compute_outputs(run.model, run.head, splits.x_val)
    assert evaluate_outputs(val_features, val_scores, splits.y_val, run.head) == records[-1]["val"]
    t_val = uniform_accuracy(val_scores, splits.y_val).threshold
    features, scores = compute_outputs(run.model, run.head, splits.x_test)
    again = evaluate_outputs(features, scores, splits.y_test, run.head, deployed_threshold=t_val)
    assert again == summary["final"]
    assert again["uni_deployed"] == uniform_accuracy(scores, splits.y_test, threshold=t_val).uni_at_threshold
    # class means of the training split, stored with the model (SPEC §2.9)
    train_features, _ = compute_outputs(run.model, run.head, splits.x_train)
    for c in range(10):
        torch.testing.assert_close(run.class_means[c], train_features[splits.y_train == c].mean(0),
                                   rtol=1e-5, atol=1e-5)
    # per-class test confusion: rows sum to the class counts, diagonal / rows = accuracy
    confusion = torch.tensor(summary["per_class"]["confusion"])
    assert torch.equal(confusion.sum(1), torch.bincount(splits.y_test, minlength=10))
    assert float(confusion.diagonal().sum()) / len(splits.y_test) == pytest.approx(again["sw"])
    # Independent check of sw: top-1 accuracy of the scores (ties count as wrong).
    top2 = scores.topk(2, dim=1)
    correct = (top2.indices[:, 0] == splits.y_test) & (top2.values[:, 0] > top2.values[:, 1])
    assert again["sw"] == pytest.approx(correct.double().mean().item(), abs=1e-12)


def test_existing_run_is_protected(tmp_path):
    out = str(tmp_path / "run")
    train(TrainConfig(head="softmax", epochs=1, out=out, **SMALL))
    before = {f: os.path.getmtime(os.path.join(out, f)) for f in ("metrics.jsonl", "config.yaml")}
    ckpt = open(os.path.join(out, "checkpoints", "last.pt"), "rb").read()
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        train(TrainConfig(head="softmax", epochs=1, out=out, **SMALL))
    assert before == {f: os.path.getmtime(os.path.join(out, f)) for f in before}
    assert open(os.path.join(out, "checkpoints", "last.pt"), "rb").read() == ckpt
    with pytest.raises(ValueError, match="cannot resume.*head"):
        train(TrainConfig(head="lmdl", epochs=2, out=out, resume=True, **SMALL))


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    # bce-u with negative sampling draws from the global torch RNG in every step, so this
    # also checks that the RNG state is saved and restored.
    common = dict(SMALL, head="bce-u", head_params={"neg_rate": 0.5}, epochs=3)
    ref_out, killed_out = str(tmp_path / "ref"), str(tmp_path / "killed")
    # The killed run is the same config trained in a subprocess whose callback SIGKILLs it
    # right after the checkpoint of epoch 2 is written.
    script = (
        "import os, signal, sys\n"
        "from unimargin.train import TrainCallback, TrainConfig, train\n"
        "class Kill(TrainCallback):\n"
        "    def on_epoch_end(self, epoch, record):\n"
        "        if epoch == 2:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        f"train(TrainConfig(out=sys.argv[1], **{common!r}), callbacks=[Kill()])\n"
    )
    cli = [sys.executable, "-c", script, killed_out]
    env = dict(os.environ)
    proc = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert [r["epoch"] for r in _lines(os.path.join(killed_out, "metrics.jsonl"))] == [1, 2]
    assert not os.path.exists(os.path.join(killed_out, "summary.json"))

    resumed = train(TrainConfig(out=killed_out, resume=True, **common))
    reference = train(TrainConfig(out=ref_out, **common))
    assert resumed["status"] == reference["status"] == "completed"
    a = torch.load(os.path.join(killed_out, "checkpoints", "last.pt"), weights_only=True)
    b = torch.load(os.path.join(ref_out, "checkpoints", "last.pt"), weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _strip_times(a["history"]) == _strip_times(b["history"])
    assert resumed["final"] == reference["final"]
    assert _strip_times(_lines(os.path.join(killed_out, "metrics.jsonl"))) == \
        _strip_times(_lines(os.path.join(ref_out, "metrics.jsonl")))


def test_huge_lr_diverges_with_a_clear_outcome(tmp_path):
    out = str(tmp_path / "run")
    summary = train(TrainConfig(head="softmax", epochs=2, lr=1e6, warmup_epochs=0, out=out, **SMALL))
    assert summary["status"] == "diverged"
    assert "epoch 1, step" in summary["message"]
    assert summary["diverged"]["epoch"] == 1 and summary["diverged"]["term"]
    last = _lines(os.path.join(out, "metrics.jsonl"))[-1]
    assert last["status"] == "diverged" and last["message"] == summary["message"]
    with open(os.path.join(out, "summary.json")) as fh:
        assert json.load(fh)["status"] == "diverged"
    assert not os.path.exists(os.path.join(out, "checkpoints", "last.pt"))  # never a bad state


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    common = dict(SMALL, head="lmdl", schedule="constant", warmup_epochs=0)
    train(TrainConfig(epochs=1, out=out, **common))
    path = os.path.join(out, "checkpoints", "last.pt")
    good = open(path, "rb").read()
    # Continue for two more epochs with a feature-norm bound every feature violates.
    summary = train(TrainConfig(epochs=3, out=out, resume=True, max_feature_norm=1e-3, **common))
    assert summary["status"] == "diverged"
    assert summary["diverged"] == {"epoch": 2, "step": 1, "term": "features"}
    assert "max_feature_norm" in summary["message"]
    assert open(path, "rb").read() == good
    assert load_run(out).epoch == 1
    assert "final" not in summary      # a diverged run is not tested


def test_loss_guard_names_the_non_finite_term():
    cfg = TrainConfig()
    out = HeadOutput(torch.tensor(float("nan")), torch.zeros(2, 3),
                     {"ce": torch.tensor(1.0), "margin": torch.tensor(float("inf"))})
    with pytest.raises(Diverged, match=r"epoch 4, step 7: the loss is not finite \(term: margin\)"):
        check_step(out, 4, 7, cfg.max_score)
    big = HeadOutput(torch.tensor(1.0), torch.full((2, 3), 1e9), {})
    with pytest.raises(Diverged, match="max_score"):
        check_step(big, 1, 1, cfg.max_score)
    check_step(HeadOutput(torch.tensor(1.0), torch.zeros(2, 3), {}), 1, 1, cfg.max_score)  # healthy


def test_bf16_backbone_keeps_head_in_float32(tmp_path):
    summary = train(TrainConfig(head="bce-u", epochs=1, bf16=True, out=str(tmp_path / "r"), **SMALL))
    assert summary["status"] == "completed"
    run = load_run(tmp_path / "r")
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    assert run.model(torch.zeros(2, 1, 40)).dtype == torch.float32


@pytest.mark.distributed
def test_torchrun_two_processes_equal_one_process(tmp_path):
    sys.path.insert(0, HERE)
    import ddp_script

    ddp_out, single_out = str(tmp_path / "ddp"), str(tmp_path / "single")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--standalone", os.path.join(HERE, "ddp_script.py"), ddp_out]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_script.main(single_out)
    for head in ddp_script.HEADS:
        a = torch.load(os.path.join(ddp_out, head, "checkpoints", "last.pt"), weights_only=True)
        b = torch.load(os.path.join(single_out, head, "checkpoints", "last.pt"), weights_only=True)
        assert a["model"].keys() == b["model"].keys()
        for k in a["model"]:
            torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6,
                                       msg=f"{head}: {k}")
        ha, hb = a["history"][0], b["history"][0]
        assert ha["train"]["loss"] == pytest.approx(hb["train"]["loss"], rel=1e-5)
        for key in ("sw", "uni", "sep_auc"):
            assert ha["val"][key] == pytest.approx(hb["val"][key], abs=1e-6)
        assert ha["val"]["n"] == hb["val"]["n"] == 399  # exact gather, no duplicates (10% of 4000, stratified)
        fa, fb = (json.load(open(os.path.join(d, head, "summary.json")))["final"]
                  for d in (ddp_out, single_out))
        for key in ("sw", "uni", "uni_deployed", "sep_auc"):
            assert fa[key] == pytest.approx(fb[key], abs=1e-6)
        assert fa["n"] == fb["n"] == 200


def test_data_conditions_change_the_training_split_only():
    from unimargin.train import TrainConfig, load_splits, resolve_config

    base = load_splits(resolve_config(TrainConfig(dataset="digits")))
    tail = load_splits(resolve_config(TrainConfig(dataset="digits", imbalance=0.1)))
    counts = torch.bincount(tail.y_train, minlength=10)
    assert counts[0] > 5 * counts[9] and len(tail.y_train) < len(base.y_train)
    assert torch.equal(tail.y_val, base.y_val) and torch.equal(tail.y_test, base.y_test)
    noisy = load_splits(resolve_config(TrainConfig(dataset="digits", label_noise=0.2)))
    flipped = float((noisy.y_train != base.y_train).double().mean())
    assert 0.15 < flipped < 0.25 and torch.equal(noisy.y_val, base.y_val)


def test_meta_device_models_and_tensors_give_clear_errors(tmp_path):
    from torch import nn

    from unimargin import build_head
    from unimargin.metrics import uniform_accuracy

    def meta_backbone(in_shape, feat_dim):
        with torch.device("meta"):
            return nn.Sequential(nn.Flatten(), nn.Linear(40, feat_dim))

    with pytest.raises(ValueError, match="meta device.*'1.weight'"):
        train(TrainConfig(out=str(tmp_path / "m"), head="softmax", epochs=1, **SMALL),
              build_backbone=meta_backbone)
    with pytest.raises(ValueError, match="scores is a meta-device tensor"):
        uniform_accuracy(torch.empty(4, 3, device="meta"), torch.zeros(4, dtype=torch.long))
    head = build_head("lmdl", 3, 4)
    with pytest.raises(ValueError, match="features or the head's weights are meta-device"):
        head(torch.empty(4, 4, device="meta"), torch.zeros(4, dtype=torch.long))


_ALLOCATOR_SCRIPT = """
import hashlib, json, resource, sys
import torch
import unimargin.train.engine as engine
from unimargin.train import TrainConfig, train
if sys.argv[2] == "off":
    engine.keep_freed_memory = lambda: False  # the engine as it was: glibc's default thresholds
common = dict(dataset="mnist1d", limit_train=768, limit_test=200, batch_size=128, quiet=True,
              num_threads=1, head="lmdl", epochs=1, seed=3)
train(TrainConfig(out=sys.argv[1] + "/warm", **common))  # imports, first allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
summary = train(TrainConfig(out=sys.argv[1] + "/run", **dict(common, epochs=2)))
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
model = torch.load(sys.argv[1] + "/run/checkpoints/last.pt", weights_only=True)["model"]
print(json.dumps({"faults": faults, "final": summary["final"], "final_val": summary["final_val"],
                  "weights": {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in model.items()}}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_changes_no_result(tmp_path):
    """The same 2-epoch run in two fresh processes, with glibc's default allocator
    thresholds and with keep_freed_memory (what train() does): identical results and
    weights. The page-fault counts are printed, not asserted: they are a performance
    measure (benchmarks/engine_overhead.py) and glibc's dynamic mmap threshold makes them
    vary from run to run (one suite run: 69 off vs 706 on; another: 20 858 vs 1 187)."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc mallopt")
    out = {}
    for mode in ("off", "on"):
        proc = subprocess.run([sys.executable, "-c", _ALLOCATOR_SCRIPT, str(tmp_path / mode), mode],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("final", "final_val", "weights"):
        assert out["on"][key] == out["off"][key], key
    print("minor page faults (off, on):", out["off"]["faults"], out["on"]["faults"])


def test_keep_freed_memory_can_be_switched_off_by_the_environment(monkeypatch):
    from unimargin.train import engine

    monkeypatch.setattr(engine, "_allocator_kept", False)
    monkeypatch.setenv("UNIMARGIN_KEEP_FREED_MEMORY", "0")
    assert engine.keep_freed_memory() is False
    assert engine._allocator_kept is False
