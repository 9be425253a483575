"""`unimargin predict`: what train read (arrays, image folders, CSV), the threshold order
(given > calibration.json > learned > fitted on validation, never test), rejection scores,
the output CSV and its safety rules."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from unimargin.cli import main
from unimargin.deploy.calibrate import calibrate_run, run_splits
from unimargin.metrics import uniform_accuracy
from unimargin.metrics.rejection import rejection_score, threshold_for_reject_rate
from unimargin.train import compute_outputs, load_run, load_splits

SMALL = ["--dataset", "mnist1d", "--limit-train", "384", "--limit-test", "200",
         "--batch-size", "64", "--feat-dim", "16", "--quiet", "--num-threads", "1"]


def _read_csv(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == ("id", "prediction", "class", "score", "accepted")
        rows = list(reader)
    return ([r["id"] for r in rows], torch.tensor([int(r["prediction"]) for r in rows]),
            torch.tensor([float(r["score"]) for r in rows], dtype=torch.float64), rows)


def _expected(r, scores, threshold):
    """SPEC §2.9 written out: argmax, rejected (−1) when the rejection score is not above t."""
    arg = scores.argmax(dim=1)
    return torch.where(r > threshold, arg, torch.full_like(arg, -1))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Raw MNIST-1D test signals without the channel dim (as a user would save them), with
    their labels."""
    from unimargin.data import load_dataset

    splits = load_dataset("mnist1d")
    x, y = splits.x_test[:50], splits.y_test[:50]
    path = tmp_path_factory.mktemp("inp") / "x.npz"
    np.savez(path, x=x[:, 0].numpy(), y=y.numpy())
    return str(path), x, y


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cache = {}

    def get(head):
        if head not in cache:
            out = root / head
            assert main(["train", "--head", head, "--epochs", "2", "--out", str(out), *SMALL]) == 0
            cache[head] = out
        return cache[head]
    return get


def _validation(run):
    _, _, x_val, y_val, _ = run_splits(run)
    f, s = compute_outputs(run.model, run.head, x_val)
    return f, s, y_val


def test_default_is_t_star_of_validation_never_test(runs, inputs, tmp_path, capsys):
    out = runs("lmdl")
    path, x, y = inputs
    csv_path = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(out), "--input", path, "--out", str(csv_path)]) == 0
    err = capsys.readouterr().err
    run = load_run(out)
    _, val_scores, y_val = _validation(run)
    t_val = uniform_accuracy(val_scores, y_val).threshold
    _, scores = compute_outputs(run.model, run.head, x)
    ids, pred, score, rows = _read_csv(csv_path)
    assert ids == [str(i) for i in range(50)]
    assert torch.equal(pred, _expected(scores.max(dim=1).values, scores, t_val))
    torch.testing.assert_close(score, scores.max(dim=1).values.double(), rtol=0, atol=0)
    assert all(r["class"] == (str(run.classes[int(r["prediction"])]) if int(r["prediction"]) >= 0 else "")
               for r in rows)
    assert all(r["accepted"] == str(int(int(r["prediction"]) >= 0)) for r in rows)
    assert "t* (validation)" in err and f"{t_val:.6g}" in err
    # the npz carries labels: the printed accuracy is evaluate's sw on these samples
    sw = uniform_accuracy(scores, y).sw
    assert f"accuracy {100 * sw:.2f}%" in err
    # the test split is never read for a choice
    splits = load_splits(run.config)
    _, test_scores = compute_outputs(run.model, run.head, splits.x_test)
    assert uniform_accuracy(test_scores, splits.y_test).threshold != t_val


def test_bce_u_threshold_order_and_array_formats(runs, inputs, tmp_path, capsys):
    out = runs("bce-u")
    run = load_run(out)
    b = float(run.head.threshold)
    path, x, _ = inputs
    _, scores = compute_outputs(run.model, run.head, x)
    best = scores.max(dim=1).values
    _, val_scores, y_val = _validation(run)
    t_val = uniform_accuracy(val_scores, y_val).threshold
    cases = {"default": ([], b, "learned threshold of bce-u"),
             "given": (["--threshold", "-0.25"], -0.25, "given"),
             "fit": (["--fit-threshold"], t_val, "--fit-threshold"),
             "closed": (["--closed-set"], float("-inf"), "closed set")}
    for name, (flags, t, reason) in cases.items():
        csv_path = tmp_path / f"{name}.csv"
        capsys.readouterr()
        assert main(["predict", "--checkpoint", str(out / "checkpoints" / "last.pt"),
                     "--input", path, "--out", str(csv_path), *flags]) == 0
        assert reason in capsys.readouterr().err, name
        assert torch.equal(_read_csv(csv_path)[1], _expected(best, scores, t)), name
    assert (_read_csv(tmp_path / "closed.csv")[1] >= 0).all()
    # .npy and .pt inputs (with the channel dim) give the same predictions
    np.save(tmp_path / "x.npy", x.numpy())
    torch.save(x, tmp_path / "x.pt")
    for f in ("x.npy", "x.pt"):
        assert main(["predict", "--checkpoint", str(out), "--input", str(tmp_path / f),
                     "--out", str(tmp_path / "o.csv"), "--overwrite"]) == 0
        assert torch.equal(_read_csv(tmp_path / "o.csv")[1], _read_csv(tmp_path / "default.csv")[1])


def test_calibration_json_is_the_default_and_scores_are_checked(runs, inputs, tmp_path, capsys):
    out = runs("softmax")
    run = load_run(out)
    path, x, _ = inputs
    f, s = compute_outputs(run.model, run.head, x)
    cal = calibrate_run(out, "far=0.1", rejection_score="centroid_cosine")
    try:
        assert main(["predict", "--checkpoint", str(out), "--input", path,
                     "--out", str(tmp_path / "c.csv")]) == 0
        assert "calibrated: far=0.1" in capsys.readouterr().err
        r = rejection_score("centroid_cosine", s, f, run.class_means)
        _, pred, score, _ = _read_csv(tmp_path / "c.csv")
        assert torch.equal(pred, _expected(r, s, cal["threshold"]))
        torch.testing.assert_close(score, r, rtol=0, atol=1e-6)
        # another score than the calibrated one: an error naming both
        assert main(["predict", "--checkpoint", str(out), "--input", path, "--out",
                     str(tmp_path / "e.csv"), "--rejection-score", "energy"]) == 2
        assert "calibrated for rejection score 'centroid_cosine'" in capsys.readouterr().err
    finally:
        (out / "calibration.json").unlink()


def test_energy_fitted_on_validation_and_refused_for_bce(runs, inputs, tmp_path, capsys):
    out = runs("softmax")
    run = load_run(out)
    path, x, _ = inputs
    assert main(["predict", "--checkpoint", str(out), "--input", path, "--out",
                 str(tmp_path / "e.csv"), "--rejection-score", "energy"]) == 0
    assert "known reject rate 0.05 (validation)" in capsys.readouterr().err
    vf, vs, _ = _validation(run)
    t = threshold_for_reject_rate(rejection_score("energy", vs), 0.05)
    _, s = compute_outputs(run.model, run.head, x)
    assert torch.equal(_read_csv(tmp_path / "e.csv")[1], _expected(torch.logsumexp(s.double(), 1), s, t))
    assert main(["predict", "--checkpoint", str(runs("bce-u")), "--input", path, "--out",
                 str(tmp_path / "b.csv"), "--rejection-score", "energy"]) == 2
    assert "softmax cross-entropy only" in capsys.readouterr().err


def test_output_safety(runs, inputs, tmp_path, capsys):
    out = runs("softmax")
    path, _, _ = inputs
    target = tmp_path / "p.csv"
    target.write_text("keep")
    base = ["predict", "--checkpoint", str(out), "--input", path]
    assert main(base + ["--out", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err and target.read_text() == "keep"
    assert main(base + ["--out", path, "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err
    ckpt = out / "checkpoints" / "last.pt"
    assert main(base + ["--out", str(ckpt), "--overwrite"]) == 2
    assert "is the checkpoint" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.tmp*"))
    assert main(base + ["--out", str(tmp_path / "n.csv"), "--threshold", "nan"]) == 2
    assert "finite" in capsys.readouterr().err and not (tmp_path / "n.csv").exists()
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 7), dtype=np.float32))
    assert main(["predict", "--checkpoint", str(out), "--input", str(wrong),
                 "--out", str(tmp_path / "w.csv")]) == 2
    assert "trained on (1, 40)" in capsys.readouterr().err
    assert not (tmp_path / "w.csv").exists()


def _write_image_tree(root, x, y, classes):
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y.tolist())):
        d = root / classes[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)).save(d / f"{i:04d}.png")


def test_image_folder_reproduces_evaluate(tmp_path, capsys):
    """Train on a train/ + test/ image folder; predict on test/ (class sub-directories give
    labels): file-name ids, class names, and the accuracy evaluate reports."""
    pytest.importorskip("PIL")
    from unimargin.data import load_dataset

    digits = load_dataset("digits")
    classes = [f"digit{c}" for c in range(10)]
    # 8-bit PNGs hold what the dataset holds up to rounding: quantise first
    xq = lambda x: (x * 255).round() / 255  # noqa: E731
    _write_image_tree(tmp_path / "data" / "train", xq(digits.x_train[:400]), digits.y_train[:400], classes)
    _write_image_tree(tmp_path / "data" / "test", xq(digits.x_test[:120]), digits.y_test[:120], classes)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--model",
                 "mlp", "--head", "cosface", "--epochs", "2", "--batch-size", "32", "--feat-dim",
                 "16", "--quiet", "--num-threads", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--json"]) == 0
    sw = json.loads(capsys.readouterr().out)["metrics"]["sw"]
    assert main(["predict", "--checkpoint", str(out), "--input", str(tmp_path / "data" / "test"),
                 "--out", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert f"accuracy {100 * sw:.2f}% (top-1, 120 samples)" in err
    ids, pred, _, rows = _read_csv(tmp_path / "p.csv")
    assert ids[0].startswith("digit") and ids[0].endswith(".png")
    assert {r["class"] for r in rows if r["class"]} <= set(classes)
    # a single image file
    one = tmp_path / "data" / "test" / ids[0]
    assert main(["predict", "--checkpoint", str(out), "--input", str(one), "--out",
                 str(tmp_path / "one.csv")]) == 0
    one_ids, one_pred, _, _ = _read_csv(tmp_path / "one.csv")
    assert one_ids == [one.name] and int(one_pred[0]) == int(pred[0])


def test_csv_with_string_labels_reproduces_evaluate(tmp_path, capsys):
    sklearn = pytest.importorskip("sklearn.datasets")
    wine = sklearn.load_wine()
    names = ["barolo", "grignolino", "barbera"]
    g = np.random.default_rng(0)
    order = g.permutation(len(wine.target))
    cols = [c.replace("/", "_") for c in wine.feature_names]

    def write(path, idx, with_label=True):
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols + (["cultivar"] if with_label else []))
            for i in idx:
                w.writerow(list(wine.data[i]) + ([names[wine.target[i]]] if with_label else []))

    write(tmp_path / "train.csv", order[:130])
    write(tmp_path / "test.csv", order[130:])
    out = tmp_path / "run"
    assert main(["train", "--dataset", "csv", "--data-dir", str(tmp_path / "train.csv"),
                 "--test-data", str(tmp_path / "test.csv"), "--label-column", "cultivar",
                 "--head", "softmax", "--epochs", "5", "--batch-size", "16", "--feat-dim", "8",
                 "--quiet", "--num-threads", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--json"]) == 0
    sw = json.loads(capsys.readouterr().out)["metrics"]["sw"]
    assert main(["predict", "--checkpoint", str(out), "--input", str(tmp_path / "test.csv"),
                 "--out", str(tmp_path / "p.csv"), "--closed-set"]) == 0
    assert f"accuracy {100 * sw:.2f}% (top-1, 48 samples)" in capsys.readouterr().err
    ids, _, _, rows = _read_csv(tmp_path / "p.csv")
    assert ids == [str(i) for i in range(1, 49)] and {r["class"] for r in rows} <= set(names)
    # without the label column: same predictions, no accuracy line
    write(tmp_path / "new.csv", order[130:], with_label=False)
    assert main(["predict", "--checkpoint", str(out), "--input", str(tmp_path / "new.csv"),
                 "--out", str(tmp_path / "q.csv"), "--closed-set"]) == 0
    assert "accuracy" not in capsys.readouterr().err
    assert torch.equal(_read_csv(tmp_path / "q.csv")[1], _read_csv(tmp_path / "p.csv")[1])
