"""Exported graphs (ONNX via onnxruntime, torch.export .pt2) against the PyTorch predict path
on every test sample, for every head, on MNIST-1D and digits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import unimargin
from unimargin.deploy.calibrate import calibrate_run, training_class_means, run_splits
from unimargin.deploy.export import export_run, read_metadata
from unimargin.metrics.evaluate import compute_outputs
from unimargin.metrics.rejection import rejection_score
from unimargin.train import TrainConfig, load_run, load_splits, train

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

COMMON = dict(batch_size=64, feat_dim=16, quiet=True, num_threads=1, epochs=1)
DATASETS = {"mnist1d": dict(limit_train=300, limit_test=300), "digits": dict(limit_train=400)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 1-epoch run per (dataset, head), trained lazily."""
    root = tmp_path_factory.mktemp("export")
    cache = {}

    def get(dataset, head):
        if (dataset, head) not in cache:
            out = str(root / f"{dataset}-{head}")
            train(TrainConfig(dataset=dataset, head=head, out=out, **COMMON, **DATASETS[dataset]))
            cache[dataset, head] = out
        return cache[dataset, head]

    return get


def _reference(run_dir, threshold):
    """PyTorch predict path: features -> head.predict at the threshold; scores."""
    run = load_run(run_dir)
    x = load_splits(run.config).x_test
    f, s = compute_outputs(run.model, run.head, x)
    labels = run.head.predict(f, threshold=threshold)
    return x, s, labels


def _median_threshold(s):
    """A threshold that rejects about half of the samples (both outcomes are exercised),
    halfway between two max scores so float32 rounding cannot flip a sample."""
    v = torch.unique(s.max(dim=1).values.double())
    m = v.numel() // 2
    return float(0.5 * (v[m - 1] + v[m]))


def _run_onnx(path, x):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.numpy()})


def _check(x, s_ref, labels_ref, scores, labels, r):
    assert labels.dtype == np.int64 and labels.shape == (x.shape[0],)
    np.testing.assert_array_equal(labels, labels_ref.numpy())
    np.testing.assert_allclose(scores, s_ref.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(r, s_ref.max(dim=1).values.numpy(), rtol=0, atol=1e-4)
    assert (labels == -1).any() and (labels >= 0).any()


HEADS = unimargin.list_heads()


# digits repeats the 8-head check on images (~20 s): marked slow (run with -m slow)
@pytest.mark.parametrize("dataset", ["mnist1d", pytest.param("digits", marks=pytest.mark.slow)])
@pytest.mark.parametrize("head", HEADS)
def test_onnx_and_pt2_match_pytorch_predict(runs, dataset, head, tmp_path):
    run_dir = runs(dataset, head)
    x, s_ref, _ = _reference(run_dir, None)
    t = _median_threshold(s_ref)
    _, _, labels_ref = _reference(run_dir, t)

    onnx_path = str(tmp_path / "model.onnx")
    meta = export_run(run_dir, "onnx", onnx_path, threshold=t)
    assert meta["threshold_source"].startswith("given")
    scores, labels, r = _run_onnx(onnx_path, x)
    _check(x, s_ref, labels_ref, scores, labels, r)

    pt2_path = str(tmp_path / "model.pt2")
    export_run(run_dir, "pt2", pt2_path, threshold=t)
    program = torch.export.load(pt2_path).module()
    with torch.no_grad():
        scores, labels, r = (v.numpy() for v in program(x))
    _check(x, s_ref, labels_ref, scores, labels, r)


def test_metadata_dynamic_batch_and_default_threshold(runs, tmp_path):
    run_dir = runs("digits", "bce-u")
    run = load_run(run_dir)
    path = str(tmp_path / "m.onnx")
    export_run(run_dir, "onnx", path)
    meta = read_metadata(path)
    assert json.loads(meta["class_names"]) == [str(c) for c in run.classes]
    assert float(meta["threshold"]) == pytest.approx(float(run.head.threshold))
    assert "learned threshold of bce-u" in meta["threshold_source"]
    assert meta["head"] == "bce-u" and meta["rejection_score"] == "max_score"
    assert meta["unimargin_version"] == unimargin.__version__
    assert json.loads(meta["input_shape"]) == ["N", *run.in_shape]
    assert "standardisation is inside the graph" in meta["preprocessing"]
    x = load_splits(run.config).x_test
    for n in (1, 3, 50):  # dynamic batch
        scores, labels, r = _run_onnx(path, x[:n])
        assert scores.shape == (n, run.head.num_classes) and labels.shape == (n,)
    # refuses to overwrite
    with pytest.raises(ValueError, match="already exists"):
        export_run(run_dir, "onnx", path)
    export_run(run_dir, "onnx", path, overwrite=True)


def test_calibration_is_the_default_threshold(runs, tmp_path):
    run_dir = runs("mnist1d", "softmax")
    cal = calibrate_run(run_dir, "far=0.1")
    path = str(tmp_path / "m.pt2")
    meta = export_run(run_dir, "pt2", path)
    assert float(meta["threshold"]) == cal["threshold"]
    assert meta["threshold_source"] == "calibrated: far=0.1 on validation"
    assert read_metadata(path)["threshold"] == meta["threshold"]
    with pytest.raises(ValueError, match="calibrated for rejection score 'max_score'"):
        export_run(run_dir, "onnx", str(tmp_path / "e.onnx"), rejection_score="energy")
    os.unlink(os.path.join(run_dir, "calibration.json"))


def test_t_star_of_validation_without_calibration(runs, tmp_path):
    run_dir = runs("mnist1d", "lmdl")
    meta = export_run(run_dir, "onnx", str(tmp_path / "m.onnx"))
    assert meta["threshold_source"] == "t* (validation), no calibration.json"
    run = load_run(run_dir)
    _, _, x_val, y_val, _ = run_splits(run)
    _, s = compute_outputs(run.model, run.head, x_val)
    assert float(meta["threshold"]) == unimargin.metrics.uniform_accuracy(s, y_val).threshold


@pytest.mark.parametrize("name", ["centroid_cosine", "energy"])
def test_other_rejection_scores_in_the_graph(runs, tmp_path, name):
    run_dir = runs("digits", "normface")
    run = load_run(run_dir)
    x_fit, y_fit, *_ = run_splits(run)
    x = load_splits(run.config).x_test
    f, s = compute_outputs(run.model, run.head, x)
    means = training_class_means(run, x_fit, y_fit)
    r_ref = rejection_score(name, s, f, means)
    v = torch.unique(r_ref)
    t = float(0.5 * (v[v.numel() // 2 - 1] + v[v.numel() // 2]))
    labels_ref = torch.where(r_ref > t, s.argmax(dim=1), -1)
    path = str(tmp_path / "m.onnx")
    meta = export_run(run_dir, "onnx", path, threshold=t, rejection_score=name)
    assert meta["rejection_score"] == name
    scores, labels, r = _run_onnx(path, x)
    np.testing.assert_allclose(r, r_ref.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(scores, s.numpy(), rtol=0, atol=1e-4)
    close = np.abs(r_ref.numpy() - t) < 1e-5  # float32 vs float64 at the boundary
    np.testing.assert_array_equal(labels[~close], labels_ref.numpy()[~close])


def test_bad_arguments(runs, tmp_path):
    run_dir = runs("mnist1d", "softmax")
    with pytest.raises(ValueError, match="format must be one of"):
        export_run(run_dir, "tflite", str(tmp_path / "m"))
    with pytest.raises(ValueError, match="out"):
        export_run(run_dir, "onnx", None)
    with pytest.raises(ValueError, match="softmax cross-entropy only"):
        export_run(runs("mnist1d", "bce-u"), "onnx", str(tmp_path / "m.onnx"),
                   rejection_score="energy")
    with pytest.raises(ValueError, match="finite"):
        export_run(run_dir, "onnx", str(tmp_path / "m.onnx"), threshold=float("nan"))
