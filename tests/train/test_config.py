"""TrainConfig: YAML load/merge, validation messages, resolution of recommended settings."""

import dataclasses

import pytest

from unimargin.train import TrainConfig, load_yaml, merge, recommended_settings, resolve_config


def test_every_head_has_recommended_settings():
    from unimargin.heads import list_heads

    for head in list_heads():
        rec = recommended_settings(head)
        assert set(rec) == {"optimizer", "lr", "momentum", "nesterov", "weight_decay",
                            "schedule", "warmup_epochs"}
    # The measurement: the binary / margin heads need the smaller lr.
    assert recommended_settings("lmdl")["lr"] < recommended_settings("softmax")["lr"]
    assert recommended_settings("bce-u")["lr"] < recommended_settings("softmax")["lr"]


def test_resolve_fills_only_unset_optimizer_fields():
    cfg = resolve_config(TrainConfig(head="bce-u", lr=0.003))
    rec = recommended_settings("bce-u")
    assert cfg.lr == 0.003
    assert (cfg.optimizer, cfg.momentum, cfg.weight_decay) == (rec["optimizer"], rec["momentum"],
                                                               rec["weight_decay"])
    assert cfg.model == "cnn1d"  # mnist1d's default backbone


@pytest.mark.parametrize("field,value,needle", [
    ("lr", -0.1, "lr"), ("lr", 0.0, "lr"), ("epochs", 0, "epochs"), ("batch_size", 0, "batch_size"),
    ("epochs", 2.5, "epochs"), ("momentum", 1.5, "momentum"), ("weight_decay", -1.0, "weight_decay"),
    ("optimizer", "rmsprop", "optimizer"), ("schedule", "linear", "schedule"),
    ("grad_clip", 0.0, "grad_clip"), ("milestones", [0, 3], "milestones"),
    ("lr", float("nan"), "lr"), ("gamma", 2.0, "gamma"), ("resume", "yes", "resume"),
    ("seed", 2**64, r"seed: expected <= 9223372036854775807"), ("seed", -1, "seed"),
    ("select_epoch", "first", "select_epoch"), ("select_metric", "loss", "select_metric"),
    ("resize", "squash", r"resize: expected one of \['crop', 'stretch'\]"),
    ("channels", 2, r"channels: expected one of \[1, 3\]"),
])
def test_bad_hyper_parameters_are_named(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        resolve_config(dataclasses.replace(TrainConfig(), **{field: value}))


@pytest.mark.parametrize("field,value", [("dataset", "imagenet"), ("head", "triplet"),
                                         ("model", "vit")])
def test_unknown_names_list_the_valid_ones(field, value):
    with pytest.raises(ValueError, match=rf"unknown {field} '{value}'.*valid"):
        resolve_config(dataclasses.replace(TrainConfig(), **{field: value}))


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown option.*'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 0.1}, source="x.yaml")


def test_yaml_load_and_merge_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("head: lmdl\nlr: 0.02\nbatch-size: 64\nhead_params: {delta_d: 3.0}\n")
    data = load_yaml(path)
    assert data == {"head": "lmdl", "lr": 0.02, "batch_size": 64, "head_params": {"delta_d": 3.0}}
    merged = merge(data, {"lr": 0.5, "epochs": None})
    assert merged["lr"] == 0.5 and merged["batch_size"] == 64 and "epochs" not in merged


def test_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read config file.*missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("head: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml.*not valid YAML"):
        load_yaml(bad)
    twice = tmp_path / "twice.yaml"
    twice.write_text("epochs: 2\nlr: 0.1\nepochs: 3\n")
    with pytest.raises(ValueError, match=r"twice.yaml.*duplicate key 'epochs' \(first at line 1\)"):
        load_yaml(twice)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("epochs: 2\n# café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.yaml.*not UTF-8 text \(byte 15"):
        load_yaml(latin)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="scalar.yaml.*mapping"):
        load_yaml(scalar)


def test_example_configs_resolve():
    import glob
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    files = sorted(glob.glob(os.path.join(root, "*.yaml")))
    assert files, "no example configs found"
    for path in files:
        cfg = resolve_config(TrainConfig.from_dict(load_yaml(path), source=path))
        assert cfg.lr > 0 and cfg.epochs >= 1
