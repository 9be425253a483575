"""`unimargin compare` / `unimargin sweep` end to end on a tiny real configuration
(digits, a few hundred samples, 1 epoch) through the real CLI entry point."""

import base64
import json
from html.parser import HTMLParser

import pytest

from unimargin.cli import main
from unimargin.experiments.sweep import parse_values, resolve_param

TINY = ["--dataset", "digits", "--seeds", "2", "--epochs", "1", "--limit-train", "300", "--batch-size", "64"]


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


def _check_html(path):
    parser = _Images()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.sources, "no images in the HTML report"
    for src in parser.sources:
        assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(parser.sources[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    return parser.sources


def test_compare_tiny_open_set(tmp_path):
    out = tmp_path / "cmp"
    config = tmp_path / "options.yaml"
    config.write_text("normalize_input: true\nhead_params: {bce-u: {neg_rate: 1e-0}}\n")
    status = main(["compare", "--heads", "softmax,bce-u", "--unknown-classes", "8,9", "--out", str(out),
                   "--head-param", "bce-u:neg_weight=1.0", "--jobs", "1", "--config", str(config), *TINY])
    assert status == 0
    markdown = (out / "report.md").read_text()
    for section in ["## Verdict", "## Summary", "## Paired comparison with softmax", "### sw ↑ (%)",
                    "## Learned threshold vs t*", "## Open set: held-out classes", "## Plots",
                    "## Per-metric tables", "## Runtime", "## Diverged or failed runs", "## Optimiser settings",
                    "## Reproduce"]:
        assert section in markdown, section
    # Open-set metrics are in the report and in the records, for every completed run.
    assert "verif_roc_auc" in markdown and "reject_auroc" in markdown
    records = json.loads((out / "records.json").read_text())
    assert [(r["head"], r["seed"]) for r in records] == [("softmax", 0), ("bce-u", 0), ("softmax", 1), ("bce-u", 1)]
    for record in records:
        assert record["status"] == "completed"
        assert 0.0 <= record["open_set"]["verif_roc_auc"] <= 1.0
        assert record["open_set"]["reject_threshold_source"] == ("learned" if record["head"] == "bce-u"
                                                                 else "t* (validation)")
        assert (out / "runs" / record["head"] / f"seed{record['seed']}" / "metrics.jsonl").exists()
    # Recommended settings are stated per head, and the rerun command is explicit.
    assert "| `softmax` | sgd |" in markdown or "| `softmax` | adamw |" in markdown
    assert "unimargin compare --dataset digits --heads softmax,bce-u --seeds 2 --epochs 1" in markdown
    assert "--unknown-classes 8,9" in markdown and "--head-param bce-u:neg_weight=1.0" in markdown
    # Every training option is a flag of compare too, so the rerun command needs no YAML.
    assert "--normalize-input" in markdown and "--head-param bce-u:neg_rate=1.0" in markdown
    assert not (out / "compare_options.yaml").exists()
    assert len(_check_html(out / "report.html")) == 5  # curves, confusion, histograms, PCA, margins


def test_sweep_tiny(tmp_path):
    out = tmp_path / "sweep"
    status = main(["sweep", "--head", "lmdl", "--param", "delta_d", "--values", "1.0,3.0", "--out", str(out),
                   "--jobs", "2", "--no-nesterov", *TINY])  # the parallel path
    assert status == 0
    markdown = (out / "report.md").read_text()
    assert "## Metrics by value" in markdown and "| `1.0` | 2/2 |" in markdown and "| `3.0` | 2/2 |" in markdown
    assert "![" in markdown and (out / "sweep.png").exists()
    records = json.loads((out / "records.json").read_text())
    assert sorted({r["param_value"] for r in records}) == [1.0, 3.0]
    assert all(r["config"]["head_params"]["delta_d"] == r["param_value"] for r in records)
    assert all(r["config"]["nesterov"] is False for r in records)
    assert "--values 1.0,3.0" in markdown and "--no-nesterov" in markdown and "nesterov | weight_decay" in markdown
    _check_html(out / "report.html")

    # --reuse: the finished runs are kept, not retrained, and the report says so.
    status = main(["sweep", "--head", "lmdl", "--param", "delta_d", "--values", "1.0,3.0", "--out", str(out),
                   "--jobs", "1", "--no-nesterov", "--reuse", *TINY])
    assert status == 0
    again = json.loads((out / "records.json").read_text())
    assert all(r["reused"] for r in again)
    assert [r["final"] for r in again] == [r["final"] for r in records]
    assert "4 runs were reused" in (out / "report.md").read_text()
    # ... but a saved run that trained something else (here: another batch size) is retrained.
    changed = [a if a != "64" else "32" for a in TINY]
    assert main(["sweep", "--head", "lmdl", "--param", "delta_d", "--values", "1.0", "--out", str(out),
                 "--jobs", "1", "--no-nesterov", "--reuse", *changed, "--seeds", "1"]) == 0
    third = json.loads((out / "records.json").read_text())
    assert len(third) == 1 and not third[0]["reused"] and third[0]["config"]["batch_size"] == 32


def test_bad_arguments_give_clear_errors(tmp_path, capsys):
    assert main(["compare", "--heads", "softmax,nope", "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["sweep", "--head", "lmdl", "--param", "bogus", "--values", "1", "--out", str(tmp_path / "y")]) == 2
    assert "bogus" in capsys.readouterr().err
    with pytest.raises(ValueError, match="head.momentum or train.momentum"):
        resolve_param("lmdl", "momentum")
    assert resolve_param("lmdl", "head.momentum") == ("head", "momentum")
    assert resolve_param("lmdl", "lr") == ("train", "lr")
    assert parse_values("1, 0.5,true,cosine") == [1, 0.5, True, "cosine"]
    with pytest.raises(ValueError, match="duplicates"):
        parse_values("1,1")


def test_train_compare_and_sweep_accept_the_same_training_flags():
    from unimargin.cli import build_parser
    from unimargin.cli._grid import GRID_FIELDS
    from unimargin.cli.options import flag_name, training_fields

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    flags = {name: {s for a in sub[name]._actions for s in a.option_strings} for name in ("train", "compare", "sweep")}
    expected = {flag_name(f.name, kind) for f, kind, _ in training_fields()}
    assert expected <= flags["train"]
    grid_expected = {flag_name(f.name, kind) for f, kind, _ in training_fields(exclude=GRID_FIELDS)}
    assert grid_expected and grid_expected <= flags["compare"] and grid_expected <= flags["sweep"]
    # every TrainConfig field is reachable from train (none hand-listed)
    import dataclasses

    from unimargin.train import TrainConfig

    assert {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli") is not False} == \
        {f.name for f, _, _ in training_fields()}
