"""`unimargin calibrate` and `unimargin export` as subprocesses (the installed entry point)."""

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
