"""A head and a dataset registered from outside the package train through `unimargin train`
and `compare` (in-process and in spawned workers) and appear in the report; an (N, d) npz
trains with default options; NAME=VALUE parsing agrees between flags and YAML (issue 10)."""

import json

import numpy as np
import pytest
import torch
import yaml

import unimargin
from unimargin.cli import main
from unimargin.data import DatasetSplits, register_dataset
from unimargin.heads.base import HeadOutput, LinearHead, cross_entropy_mean


@unimargin.register_head("toy-plugin-head", recommended={"optimizer": "sgd", "lr": 0.05})
class ToyHead(LinearHead):
    """Plain linear + cross-entropy, defined outside the package with one decorator."""

    def __init__(self, num_classes, feat_dim):
        super().__init__(num_classes, feat_dim, bias=True)
        self.reset_parameters()

    def _loss(self, features, labels):
        logits = self._raw_scores(features)
        ce = cross_entropy_mean(logits, labels)
        return HeadOutput(ce, logits, {"ce": ce.detach()})


@register_dataset("toy-plugin-blobs", default_model="mlp", layout="tabular")
def toy_blobs(n_per_class: int = 40) -> DatasetSplits:
    """Three Gaussian blobs in 5-d (tabular layout)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 5) * 4
    y = torch.arange(3).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), 5, generator=g)
    test = torch.arange(len(y)) % 4 == 0
    return DatasetSplits(x[~test], y[~test], x[test], y[test], ["a", "b", "c"], name="toy-plugin-blobs")


@pytest.fixture(scope="module", autouse=True)
def _unregister_plugins_afterwards():
    # The registries are process-global: leave them as the other test modules expect.
    yield
    from unimargin.data import registry as data_registry
    from unimargin.heads import registry as head_registry

    data_registry._REGISTRY.pop("toy-plugin-blobs", None)
    head_registry._HEADS.pop("toy-plugin-head", None)
    head_registry._RECOMMENDED.pop("toy-plugin-head", None)


TINY = ["--seeds", "1", "--epochs", "1", "--batch-size", "32", "--feat-dim", "8"]


def test_outside_head_and_dataset_through_compare_in_workers(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--dataset", "toy-plugin-blobs", "--heads", "softmax,toy-plugin-head",
                 "--seeds", "2", "--jobs", "2", "--out", str(out), *TINY[2:]]) == 0
    records = json.loads((out / "records.json").read_text())
    assert {(r["head"], r["status"]) for r in records} == {("softmax", "completed"), ("toy-plugin-head", "completed")}
    assert "`toy-plugin-head`" in (out / "report.md").read_text()


def test_outside_dataset_through_train(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "toy-plugin-blobs", "--head", "toy-plugin-head", "--epochs", "1",
                 "--quiet", "--out", str(run)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "completed"


def test_tabular_npz_trains_with_default_options(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = (np.eye(3, 6)[y] * 3 + rng.normal(size=(90, 6))).astype(np.float32)
    x[:, 5] = 7.0  # a constant feature must not give NaN
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    assert main(["train", "--dataset", "npz", "--data-dir", str(path), "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0
    assert main(["compare", "--dataset", "npz", "--data-dir", str(path), "--heads", "softmax,bce-u", "--jobs", "1",
                 "--out", str(tmp_path / "cmp"), *TINY]) == 0
    for record in json.loads((tmp_path / "cmp" / "records.json").read_text()):
        assert record["status"] == "completed" and np.isfinite(record["final"]["sw"])


def test_head_param_flag_and_yaml_agree(tmp_path):
    """`train --head-param reg_weight=1e-3` works, YAML `1e-3` is the same float, and
    compare's HEAD:NAME=VALUE gives the same value."""
    small = ["--limit-train", "200", "--limit-test", "100", "--epochs", "1", "--quiet", "--feat-dim", "8"]
    assert main(["train", "--head", "lmdl", "--head-param", "reg_weight=1e-3", "--out", str(tmp_path / "a"),
                 *small]) == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text("head: lmdl\nhead_params: {reg_weight: 1e-3}\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "b"), *small]) == 0
    a = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["head_params"]
    b = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["head_params"]
    assert a == b == {"reg_weight": 0.001} and isinstance(a["reg_weight"], float)
    assert main(["compare", "--heads", "lmdl", "--head-param", "lmdl:reg_weight=1e-3", "--jobs", "1",
                 "--out", str(tmp_path / "c"), "--limit-train", "200", "--limit-test", "100", *TINY]) == 0
    record = json.loads((tmp_path / "c" / "records.json").read_text())[0]
    assert record["config"]["head_params"]["reg_weight"] == 0.001
