"""`unimargin train | evaluate` end to end, config precedence, and error exits (predict:
test_cli_predict.py)."""

import csv
import json

import numpy as np
import pytest
import torch

from unimargin.cli import main
from unimargin.metrics import uniform_accuracy
from unimargin.train import compute_outputs, load_run, load_splits

SMALL = ["--dataset", "mnist1d", "--limit-train", "384", "--limit-test", "200",
         "--batch-size", "64", "--feat-dim", "16", "--quiet", "--num-threads", "1"]


def _read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return ([int(r["index"]) for r in rows], torch.tensor([int(r["prediction"]) for r in rows]),
            torch.tensor([float(r["score"]) for r in rows], dtype=torch.float64))


def _expected_predictions(scores, threshold):
    """SPEC §2.9 written out: argmax, rejected (−1) when the max score is not above t."""
    best, arg = scores.max(dim=1)
    return torch.where(best > threshold, arg, torch.full_like(arg, -1)), best


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Raw MNIST-1D test signals without the channel dim, as a user would save them."""
    from unimargin.data import load_dataset

    x = load_dataset("mnist1d").x_test[:50]
    path = tmp_path_factory.mktemp("inp") / "x.npz"
    np.savez(path, x=x[:, 0].numpy())
    return str(path), x


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["predict"]])
def test_help(command, capsys):
    assert main(command + ["--help"]) == 0
    assert "usage: unimargin" in capsys.readouterr().out


def test_lmdl_train_from_config_then_evaluate_and_predict(tmp_path, capsys, inputs):
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("head: lmdl\nepochs: 2\nlr: 0.5\nhead_params: {delta_d: 2.0}\n")
    rc = main(["train", "--config", str(cfg), "--lr", "0.01", "--out", str(out), *SMALL])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["status"] == "completed" and printed["epochs_completed"] == 2
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 0.01 and saved["head"] == "lmdl"  # flag beats file
    assert saved["head_params"] == {"delta_d": 2.0} and saved["limit_train"] == 384
    summary = json.loads((out / "summary.json").read_text())

    metrics_path = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(out), "--json", "--out", str(metrics_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(metrics_path.read_text())
    assert printed["epoch"] == 2 and printed["metrics"] == summary["final"]

    # predict: tests/cli/test_cli_predict.py


def test_resume_flag_continues_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    constant = ["--schedule", "constant", "--warmup-epochs", "0"]
    assert main(["train", "--head", "softmax", "--epochs", "1", "--out", str(out), *constant, *SMALL]) == 0
    # Without --resume/--overwrite the run is protected (exit 2, nothing touched).
    before = (out / "checkpoints" / "last.pt").read_bytes()
    assert main(["train", "--head", "softmax", "--epochs", "2", "--out", str(out), *SMALL]) == 2
    assert (out / "checkpoints" / "last.pt").read_bytes() == before
    # --resume alone picks the rest of the options from the run's config.yaml; a constant
    # schedule does not depend on the number of epochs, so the run may be extended.
    assert main(["train", "--resume", "--epochs", "2", "--out", str(out)]) == 0
    assert load_run(out).epoch == 2
    config = (out / "config.yaml").read_text()
    assert "epochs: 2" in config
    # ... but never shortened: config.yaml would then describe epochs that were not trained
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "1", "--out", str(out)]) == 2
    assert "already trained 2 epochs" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == config and load_run(out).epoch == 2
    # a cosine schedule spans the run's epochs: changing them on resume is refused
    cosine = tmp_path / "cosine"
    assert main(["train", "--head", "softmax", "--epochs", "1", "--out", str(cosine), *SMALL]) == 0
    assert main(["train", "--resume", "--epochs", "2", "--out", str(cosine)]) == 2
    assert "cosine schedule over 1 epochs" in capsys.readouterr().err
    # --resume where there is no checkpoint is an error, not a fresh start over old files
    (cosine / "checkpoints" / "last.pt").unlink()
    metrics = (cosine / "metrics.jsonl").read_text()
    assert main(["train", "--resume", "--head", "softmax", "--epochs", "1", "--out", str(cosine), *SMALL]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert (cosine / "metrics.jsonl").read_text() == metrics
    assert main(["train", "--head", "softmax", "--epochs", "1", "--overwrite", "--out", str(out), *SMALL]) == 0
    assert load_run(out).epoch == 1


@pytest.mark.parametrize("argv,needle", [
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["train", "--head", "triplet"], "unknown head 'triplet'"),
    (["train", "--model", "vit"], "unknown model 'vit'"),
    (["train", "--lr", "-0.1"], "lr: expected > 0"),
    (["train", "--epochs", "0"], "epochs: expected >= 1"),
    (["train", "--head", "lmdl", "--head-param", "delta_v=-1"], "delta_v"),
    (["train", "--config", "/nonexistent/c.yaml"], "cannot read config file"),
    (["evaluate", "--checkpoint", "/nonexistent/run"], "does not exist"),
])
def test_errors_exit_2_with_a_message(argv, needle, tmp_path, capsys):
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "r"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_invalid_yaml_corrupt_checkpoint_and_bad_input(tmp_path, capsys, inputs):
    bad = tmp_path / "bad.yaml"
    bad.write_text("head: [lmdl\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    corrupt = tmp_path / "last.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["evaluate", "--checkpoint", str(corrupt)]) == 2
    assert "corrupt" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "--head", "softmax", "--epochs", "1", "--out", str(out), *SMALL]) == 0
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 7), dtype=np.float32))
    assert main(["predict", "--checkpoint", str(out), "--input", str(wrong),
                 "--out", str(tmp_path / "p.csv")]) == 2
    assert "trained on (1, 40)" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    assert main(["train", "--epochs", "two"]) == 2  # argparse usage error
