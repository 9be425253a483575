"""SPEC §3.9 in the engine: every choice (epoch, threshold) is made on the validation split;
the test split is evaluated once, at the end, and never changes a choice."""

import numpy as np
import pytest
import torch

from unimargin.train import TrainConfig, compute_outputs, load_run, load_splits, train
from unimargin.metrics import uniform_accuracy

SMALL = dict(feat_dim=8, quiet=True, num_threads=1, warmup_epochs=0, batch_size=32,
             model="mlp")


def _npz(path, test_labels=None):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    x, y = x[order].astype(np.float32), y[order]
    y_test = y[1400:] if test_labels is None else test_labels
    np.savez(path, x=x[:1400], y=y[:1400], x_test=x[1400:], y_test=y_test)
    return len(y) - 1400


def test_random_test_labels_change_no_choice(tmp_path):
    n_test = _npz(tmp_path / "a.npz")
    _npz(tmp_path / "b.npz", test_labels=np.random.default_rng(1).integers(0, 10, n_test))
    runs = {}
    for name in ("a", "b"):
        runs[name] = train(TrainConfig(dataset="npz", data_dir=str(tmp_path / f"{name}.npz"),
                                       head="softmax", epochs=4, select_epoch="best",
                                       out=str(tmp_path / f"run-{name}"), **SMALL))
    a, b = runs["a"], runs["b"]
    assert a["selected_epoch"] == b["selected_epoch"]
    assert a["final"]["val_t_star"] == b["final"]["val_t_star"]        # the deployed threshold
    assert a["final_val"] == b["final_val"]
    ha = [r["val"] for r in load_run(tmp_path / "run-a").history]
    hb = [r["val"] for r in load_run(tmp_path / "run-b").history]
    assert ha == hb                                                     # per-epoch numbers
    ma, mb = load_run(tmp_path / "run-a").model.state_dict(), load_run(tmp_path / "run-b").model.state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)                   # the same model
    assert a["final"]["sw"] != b["final"]["sw"]                         # only test figures move
    assert b["final"]["sw"] < 0.3


def test_select_epoch_best_keeps_the_best_validation_epoch(tmp_path):
    _npz(tmp_path / "d.npz")
    cfg = dict(SMALL, dataset="npz", data_dir=str(tmp_path / "d.npz"), head="softmax",
               epochs=5, lr=0.05, schedule="constant", select_epoch="best", select_metric="uni")
    summary = train(TrainConfig(out=str(tmp_path / "run"), **cfg))
    run = load_run(tmp_path / "run")
    history = run.history
    values = [r["val"]["uni"] for r in history]
    best = int(np.argmax(values)) + 1                       # first epoch on ties
    assert summary["selected_epoch"] == best == run.selected_epoch == run.epoch
    assert summary["final_val"] == history[best - 1]["val"]
    # the reloaded (kept) model reproduces the selected epoch's validation numbers and the test
    splits = load_splits(run.config)
    _, val_scores = compute_outputs(run.model, run.head, splits.x_val)
    assert uniform_accuracy(val_scores, splits.y_val).uni == pytest.approx(values[best - 1], abs=0)
    _, test_scores = compute_outputs(run.model, run.head, splits.x_test)
    assert uniform_accuracy(test_scores, splits.y_test).sw == pytest.approx(summary["final"]["sw"], abs=0)
    # last.pt still holds the final epoch, for --resume
    from unimargin.train.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 5


def test_the_kept_best_epoch_is_that_epochs_model(tmp_path, monkeypatch):
    """Scripted validation numbers make epoch 2 of 3 the best; the kept model must then be
    bitwise the model a 2-epoch run (same seed, constant schedule) ends with."""
    import unimargin.train.engine as engine

    _npz(tmp_path / "d.npz")
    cfg = dict(SMALL, dataset="npz", data_dir=str(tmp_path / "d.npz"), head="softmax",
               lr=0.05, schedule="constant")
    real = engine._evaluate_split
    scripted = {1: 0.5, 2: 0.9, 3: 0.6}

    def fake(cfg_, net, x, y, epoch, split, callbacks=()):
        out = real(cfg_, net, x, y, epoch, split, callbacks)
        return {**out, "uni": scripted[epoch]}

    monkeypatch.setattr(engine, "_evaluate_split", fake)
    summary = train(TrainConfig(out=str(tmp_path / "best"), epochs=3, select_epoch="best",
                                select_metric="uni", **cfg))
    monkeypatch.setattr(engine, "_evaluate_split", real)
    two = train(TrainConfig(out=str(tmp_path / "two"), epochs=2, **cfg))
    assert summary["selected_epoch"] == 2 and summary["final_val"]["uni"] == 0.9
    kept, ref = load_run(tmp_path / "best"), load_run(tmp_path / "two")
    assert kept.epoch == 2 and kept.path.endswith("best.pt")
    sa, sb = kept.model.state_dict(), ref.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert summary["final"]["sw"] == two["final"]["sw"]        # tested once, on that model
