"""`unimargin evaluate`: the run's own final numbers, per-class table and confusion matrix
with class names, worst confused pairs, open-set rows per rejection score, --json."""

from __future__ import annotations

import json

import pytest
import torch

from unimargin.cli import main
from unimargin.deploy.calibrate import run_splits
from unimargin.metrics.evaluate import compute_outputs
from unimargin.metrics.rejection import rejection_score, threshold_for_reject_rate
from unimargin.train import load_run

SMALL = ["--dataset", "mnist1d", "--limit-train", "600", "--limit-test", "300",
         "--batch-size", "64", "--feat-dim", "16", "--quiet", "--num-threads", "1"]


@pytest.fixture(scope="module")
def open_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "run"
    assert main(["train", "--head", "softmax", "--epochs", "2", "--unknown-classes", "7,8,9",
                 "--out", str(out), *SMALL]) == 0
    return out


def test_json_matches_the_run_record(open_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(open_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((open_run / "summary.json").read_text())
    m = result["metrics"]
    # every number the run recorded for its test split, the same (the one evaluation)
    for key, value in summary["final"].items():
        assert m[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    for key in ("reject_auroc_energy", "reject_auroc_centroid_cosine",
                "reject_open_set_accuracy_energy", "reject_threshold_centroid_cosine"):
        assert m[key] is not None, key
    pc = result["per_class"]
    assert pc["classes"] == [str(c) for c in range(7)]
    assert {k: pc[k] for k in ("accuracy", "confusion", "worst_confused")} == \
        {k: summary["per_class"][k] for k in ("accuracy", "confusion", "worst_confused")}


def test_energy_threshold_is_chosen_on_validation(open_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(open_run), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    run = load_run(open_run)
    _, _, x_val, _, _ = run_splits(run)
    _, s = compute_outputs(run.model, run.head, x_val)
    t = threshold_for_reject_rate(rejection_score("energy", s), 0.05)
    assert m["reject_threshold_energy"] == pytest.approx(t)


def test_tables_with_class_names(open_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(open_run)]) == 0
    text = capsys.readouterr().out
    assert "per class:" in text and "confusion matrix (rows: true class" in text
    assert "worst confused (true → predicted, count):" in text
    for score in ("max_score", "centroid_cosine", "energy"):
        assert f"  {score} " in text
    assert "reject 5% of known validation" in text and "deployed Uni" in text
    run = load_run(open_run)
    assert len(run.classes) == 7
    # a per-class row per class: name, count, accuracy
    rows = [line.split() for line in text.splitlines() if line.strip().endswith("%")
            and line.split()[0] in {str(c) for c in run.classes} and len(line.split()) == 3]
    assert len(rows) == 7


def test_split_val_and_errors(open_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(open_run), "--split", "val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    run = load_run(open_run)
    _, _, _, y_val, _ = run_splits(run)
    assert result["split"] == "val" and result["metrics"]["n"] == int(y_val.numel())
    assert torch.tensor(result["per_class"]["confusion"]).sum() == y_val.numel()
