"""`unimargin calibrate`, `export` and `predict` as subprocesses (the installed entry point);
export -> onnxruntime == predict for every head."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


def _cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "unimargin", *args], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    _cli("train", "--dataset", "digits", "--head", "bce-u", "--epochs", "1", "--limit-train",
         "500", "--feat-dim", "16", "--quiet", "--num-threads", "1", "--out", out)
    return out


def test_calibrate_prints_table_and_stores_file(run_dir):
    proc = _cli("calibrate", "--checkpoint", run_dir, "--objective", "frr=0.2")
    out = proc.stdout
    assert "calibrated: frr=0.2 on validation" in out
    assert "FAR [95% CI]" in out and "learned b" in out and "test-optimal" in out
    stored = json.load(open(os.path.join(run_dir, "calibration.json")))
    assert stored["objective"] == "frr=0.2"
    assert stored["validation"]["frr"]["value"] <= 0.2
    assert f"{stored['threshold']:.6g}" in out


def test_calibrate_bad_objective_exits_2(run_dir):
    proc = _cli("calibrate", "--checkpoint", run_dir, "--objective", "far=3", check=False)
    assert proc.returncode == 2 and "objective" in proc.stderr


def test_export_uses_calibration_and_refuses_overwrite(run_dir, tmp_path):
    import onnxruntime as ort

    _cli("calibrate", "--checkpoint", run_dir, "--objective", "uni")
    threshold = json.load(open(os.path.join(run_dir, "calibration.json")))["threshold"]
    path = str(tmp_path / "m.onnx")
    proc = _cli("export", "--checkpoint", run_dir, "--format", "onnx", "--out", path)
    assert "calibrated: uni on validation" in proc.stderr
    assert f"{threshold:.6g}" in proc.stderr
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert float(meta["threshold"]) == threshold and meta["head"] == "bce-u"
    scores, labels, r = sess.run(None, {"x": np.zeros((3, 1, 8, 8), np.float32)})
    assert scores.shape == (3, 10) and labels.shape == (3,)
    again = _cli("export", "--checkpoint", run_dir, "--out", path, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    _cli("export", "--checkpoint", run_dir, "--out", path, "--overwrite", "--threshold", "0.5")
    pt2 = str(tmp_path / "m.pt2")
    proc = _cli("export", "--checkpoint", run_dir, "--format", "pt2", "--out", pt2)
    assert os.path.getsize(pt2) > 0 and "pt2" in proc.stderr


# --------------------------------------------------------------- export == predict
COMMON = dict(batch_size=64, feat_dim=16, quiet=True, num_threads=1, epochs=1)
DATASETS = {"mnist1d": dict(limit_train=300, limit_test=300), "digits": dict(limit_train=400)}


def _heads():
    import unimargin

    return unimargin.list_heads()


# digits repeats the 8-head check on images: marked slow (run with -m slow)
@pytest.mark.parametrize("dataset", ["mnist1d", pytest.param("digits", marks=pytest.mark.slow)])
@pytest.mark.parametrize("head", _heads())
def test_onnxruntime_gives_the_labels_of_unimargin_predict(dataset, head, tmp_path):
    """issue 14: export -> onnxruntime on the real test split gives the labels `unimargin
    predict` (a subprocess, default threshold on both sides) writes, on every sample, and
    the rejection scores within 1e-4."""
    import csv

    import onnxruntime as ort

    from unimargin.deploy.export import export_run
    from unimargin.train import TrainConfig, load_run, load_splits, train

    run_dir = str(tmp_path / "run")
    train(TrainConfig(dataset=dataset, head=head, out=run_dir, **COMMON, **DATASETS[dataset]))
    x = load_splits(load_run(run_dir).config).x_test
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=x.numpy())
    model = str(tmp_path / "m.onnx")
    meta = export_run(run_dir, "onnx", model)
    out = tmp_path / "p.csv"
    proc = _cli("predict", "--checkpoint", run_dir, "--input", str(inputs), "--out", str(out))
    assert meta["threshold_source"] in proc.stderr  # the same default threshold, said so
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels_cli = np.array([int(r["prediction"]) for r in rows])
    score_cli = np.array([float(r["score"]) for r in rows])
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    scores, labels, r = sess.run(None, {"x": x.numpy()})
    assert len(rows) == x.shape[0] == labels.shape[0]
    np.testing.assert_array_equal(labels, labels_cli)
    np.testing.assert_allclose(r, score_cli, rtol=0, atol=1e-4)
    run = load_run(run_dir)
    from unimargin.metrics.evaluate import compute_outputs

    _, s_ref = compute_outputs(run.model, run.head, x)
    np.testing.assert_allclose(scores, s_ref.numpy(), rtol=0, atol=1e-4)
