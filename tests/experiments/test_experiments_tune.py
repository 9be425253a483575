"""`compare --tune` (issue 13): per-head Optuna studies on the first seed's validation split,
every trial and the choice in tune/tune.json, all seeds trained at the chosen values, finished
trials reused, and no choice reading the test split. Also: `sweep` trains through the same
runner, so its runs record the validation split too."""

import json
import sys

from experiment_procs import write_blobs_npz
import pytest

from unimargin.cli import main
from unimargin.experiments import run_sweep
from unimargin.experiments.tune import parse_tune, search_space, trial_value
from unimargin.heads import recommended_settings
from unimargin.report.records import RunRecord, read_tuning

pytest.importorskip("optuna")


def _write_npz(path, test_labels_seed=None):
    write_blobs_npz(path, seed=0, dim=6, spread=1.5, n_train=60, n_test=30,
                    test_labels_seed=test_labels_seed)


def _tuned_compare(data, out, *extra):
    return main(["compare", "--dataset", "npz", "--data-dir", str(data), "--heads", "softmax,lmdl", "--seeds", "2",
                 "--epochs", "3", "--feat-dim", "8", "--batch-size", "32", "--tune", "lr,lmdl.delta_d",
                 "--trials", "3", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    data = root / "data.npz"
    _write_npz(data)
    assert _tuned_compare(data, root / "cmp", "--jobs", "2") == 0
    return root, data


def test_tune_json_holds_every_trial_and_the_choice(tuned):
    root, _ = tuned
    out = root / "cmp"
    tune = json.loads((out / "tune" / "tune.json").read_text())
    assert tune["metric"] == "val.sw" and tune["trials_per_head"] == 3
    assert set(tune["heads"]) == {"softmax", "lmdl"}
    assert set(tune["heads"]["softmax"]["space"]) == {"lr"}
    assert set(tune["heads"]["lmdl"]["space"]) == {"lr", "head.delta_d"}
    records = json.loads((out / "records.json").read_text())
    for head, study in tune["heads"].items():
        assert [t["number"] for t in study["trials"]] == [0, 1, 2]
        for trial in study["trials"]:
            assert set(trial["params"]) == set(study["space"])
            for name, value in trial["params"].items():
                assert study["space"][name]["low"] <= value <= study["space"][name]["high"]
            run = out / trial["out"]
            summary = json.loads((run / "summary.json").read_text())
            assert summary["config"]["seed"] == 0 and summary["config"]["epochs"] == 3
            assert summary["config"]["lr"] == trial["params"]["lr"]
            if trial["state"] == "COMPLETE":  # the value is the validation metric, not the test one
                assert trial["value"] == summary["final_val"]["sw"]
        done = [t for t in study["trials"] if t["value"] is not None]
        best = max(done, key=lambda t: t["value"])
        assert study["best"] == best["params"] and study["best_value"] == best["value"]
        # the first seed's run is the chosen trial (trained for the same epochs); not "reused"
        first = next(r for r in records if r["head"] == head and r["seed"] == 0)
        chosen = next(t for t in study["trials"] if t["params"] == study["best"])
        assert first["final"] == json.loads((out / chosen["out"] / "summary.json").read_text())["final"]
        assert not first["reused"]
        # every seed trains at the chosen values
        for record in (r for r in records if r["head"] == head):
            assert record["config"]["lr"] == study["best"]["lr"]
            if head == "lmdl":
                assert record["config"]["head_params"]["delta_d"] == study["best"]["head.delta_d"]
    lr = tune["heads"]["softmax"]["space"]["lr"]
    rec = recommended_settings("softmax")["lr"]
    assert lr == {"low": pytest.approx(rec / 10), "high": pytest.approx(rec * 10), "log": True}
    # the report side reads it (report/records.py) and the rerun command repeats the tuning
    assert [s.head for s in read_tuning(out).studies] == ["softmax", "lmdl"]
    assert "--tune lr,lmdl.delta_d --trials 3" in (out / "report.md").read_text()


def test_test_labels_never_influence_the_choice(tuned, tmp_path):
    root, _ = tuned
    shuffled = tmp_path / "shuffled.npz"
    _write_npz(shuffled, test_labels_seed=123)
    assert _tuned_compare(shuffled, tmp_path / "cmp", "--jobs", "1") == 0
    first = json.loads((root / "cmp" / "tune" / "tune.json").read_text())
    second = json.loads((tmp_path / "cmp" / "tune" / "tune.json").read_text())
    for head in first["heads"]:
        assert second["heads"][head]["best"] == first["heads"][head]["best"]
        assert [t["value"] for t in second["heads"][head]["trials"]] == \
               [t["value"] for t in first["heads"][head]["trials"]]
    # ...while the test figures did change (the test split was really replaced)
    test_a = {(r["head"], r["seed"]): r["final"]["sw"] for r in json.loads((root / "cmp" / "records.json").read_text())}
    test_b = {(r["head"], r["seed"]): r["final"]["sw"] for r in json.loads((tmp_path / "cmp" / "records.json").read_text())}
    assert test_a != test_b


def test_reuse_reuses_finished_trials(tuned, capsys):
    root, data = tuned
    before = (root / "cmp" / "tune" / "tune.json").read_text()
    capsys.readouterr()
    assert _tuned_compare(data, root / "cmp", "--jobs", "1", "--reuse") == 0
    err = capsys.readouterr().err
    assert err.count("reused (completed earlier)") + err.count("reused (diverged earlier)") == 6 + 4, err
    after = json.loads((root / "cmp" / "tune" / "tune.json").read_text())
    assert after == json.loads(before)


def test_parse_tune_and_spaces():
    spec = parse_tune("lr, weight_decay ,lmdl.delta_d=0.5:3", trials=4, epochs=2, metric="uni")
    assert spec.params == ("lr", "weight_decay", "lmdl.delta_d") and spec.trials == 4 and spec.metric == "uni"
    space = search_space(spec, "lmdl")
    assert space["weight_decay"] == {"low": 1e-6, "high": 1e-2, "log": True}
    assert space["head.delta_d"] == {"low": 0.5, "high": 3.0, "log": False}  # a 6x range: uniform
    assert "head.delta_d" not in search_space(spec, "softmax")
    assert search_space(parse_tune("lmdl.delta_d"), "lmdl")["head.delta_d"] == {"low": 0.5, "high": 6.0, "log": True}
    for bad, match in [("momentum", "not tunable"), ("lr,lr", "twice"), ("lr=3:1", "LOW < HIGH"), ("", "expected"),
                       ("lr=a:b", "LOW:HIGH")]:
        with pytest.raises(ValueError, match=match):
            parse_tune(bad)
    with pytest.raises(ValueError, match="--trials"):
        parse_tune("lr", trials=0)
    with pytest.raises(ValueError, match="no hyper-parameter 'nope'"):
        search_space(parse_tune("lmdl.nope=1:2"), "lmdl")
    with pytest.raises(ValueError, match="no default range for lmdl.reg_weight"):
        search_space(parse_tune("lmdl.reg_weight"), "lmdl")


def test_trial_value_reads_validation_never_test():
    record = RunRecord(head="h", seed=0, status="completed", final={"sw": 0.9}, final_val={"sw": 0.5, "uni": 0.25})
    assert trial_value(record, "sw") == 0.5 and trial_value(record, "uni") == 0.25
    old = RunRecord(head="h", seed=0, status="completed", final={"sw": 0.9},
                    history=[{"epoch": 1, "val": {"sw": 0.1}}, {"epoch": 2, "val": {"sw": 0.3}}])
    assert trial_value(old, "sw") == 0.3
    assert trial_value(RunRecord(head="h", seed=0, status="completed", final={"sw": 0.9}), "sw") is None
    assert trial_value(RunRecord(head="h", seed=0, status="diverged", final_val={"sw": 0.5}), "sw") is None


def test_errors_before_training(tmp_path, capsys, monkeypatch):
    base = ["compare", "--dataset", "npz", "--heads", "softmax", "--seeds", "1", "--epochs", "1", "--out",
            str(tmp_path / "x")]
    data = tmp_path / "d.npz"
    _write_npz(data)
    base += ["--data-dir", str(data)]
    assert main([*base, "--tune", "lr", "--lr", "0.1"]) == 2
    assert "tune it or fix it" in capsys.readouterr().err
    assert main([*base, "--tune", "lmdl.delta_d"]) == 2
    assert "not compared" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna", None)  # Optuna not installed
    assert main([*base, "--tune", "lr"]) == 2
    assert "pip install unimargin[tune]" in capsys.readouterr().err
    assert not (tmp_path / "x" / "runs").exists()


def test_sweep_runs_record_the_validation_split(tmp_path):
    data = tmp_path / "d.npz"
    _write_npz(data)
    result = run_sweep(head="softmax", param="lr", values="0.01,0.1", dataset="npz", seeds=1, epochs=2,
                       out=tmp_path / "sweep", overrides={"data_dir": str(data), "feat_dim": 8, "batch_size": 32},
                       log=lambda m: None)
    for record in result.records:
        assert record.ok and set(record.final_val) >= {"sw", "uni"}
        assert all("val" in row and "test" not in row for row in record.history)
        assert record.splits["n_val"] > 0 and record.splits["n_train"] + record.splits["n_val"] == 180
        assert record.final_val["sw"] == record.history[-1]["val"]["sw"]  # select_epoch last
