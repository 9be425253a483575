"""Regression tests of docs/reliability.md that a user meets on the command line (issue 11
items 7 and 8), run as `unimargin` subprocesses."""

import json
import subprocess
import sys


def _unimargin(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "unimargin", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_a_last_batch_of_one_sample_trains_every_batchnorm_backbone(tmp_path):
    # 259 = 2·129 + 1: the last batch held one sample and BatchNorm raised after a full epoch
    for model in ("cnn1d", "resnet18", "cnn"):
        extra = [] if model == "cnn1d" else ["--dataset", "digits"]
        limit = "259"
        proc = _unimargin("train", *extra, "--model", model, "--batch-size", "129", "--limit-train",
                          limit, "--limit-test", "64", "--epochs", "1", "--feat-dim", "8", "--quiet",
                          "--out", str(tmp_path / model))
        assert proc.returncode == 0, f"{model}: {proc.stderr[-2000:]}"
    proc = _unimargin("train", "--batch-size", "1", "--epochs", "1", "--quiet", "--out",
                      str(tmp_path / "one"))
    assert proc.returncode == 2 and "BatchNorm" in proc.stderr and "--batch-size >= 2" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "one" / "metrics.jsonl").exists()


def test_one_held_out_class_evaluates_and_compares(tmp_path):
    run = tmp_path / "run"
    common = ["--unknown-classes", "9", "--limit-train", "512", "--epochs", "1"]
    proc = _unimargin("train", *common, "--quiet", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    proc = _unimargin("evaluate", "--checkpoint", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)["metrics"]
    assert metrics["verif_available"] is False and metrics["verif_roc_auc"] is None
    assert 0.0 <= metrics["reject_auroc"] <= 1.0        # rejection still works with one class
    cmp_dir = tmp_path / "cmp"
    proc = _unimargin("compare", *common, "--heads", "softmax,lmdl", "--seeds", "1", "--jobs", "1",
                      "--out", str(cmp_dir), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (cmp_dir / "report.md").read_text()
    assert "Open set" in report or "open set" in report
