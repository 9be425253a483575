"""``--tensorboard``: the event files hold what metrics.jsonl holds (read back with
TensorBoard's own reader), plus validation score histograms."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("tensorboard")


def test_tensorboard_events_match_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "unimargin", "train", "--head", "lmdl", "--epochs", "2",
           "--limit-train", "256", "--limit-test", "100", "--batch-size", "64", "--quiet",
           "--tensorboard", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tags = set(acc.Tags()["scalars"])
    assert {"lr", "train/loss", "train/compact", "train/margin", "val/sw", "val/uni",
            "val/t_star"} <= tags
    for name, get in (("train/loss", lambda r: r["train"]["loss"]),
                      ("train/margin", lambda r: r["train"]["terms"]["margin"]),
                      ("val/sw", lambda r: 100 * r["val"]["sw"]),       # % like the report
                      ("val/t_star", lambda r: r["val"]["t_star"])):
        events = acc.Scalars(name)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([get(r) for r in records], rel=1e-6)
    hist = acc.Histograms("val_scores/positive")
    assert [h.step for h in hist] == [1, 2]
    assert hist[0].histogram_value.num == records[0]["val"]["n"]


def test_tensorboard_missing_names_the_extra(monkeypatch):
    import builtins

    from unimargin.train.tensorboard import open_summary_writer

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ValueError, match=r"pip install 'unimargin\[tensorboard\]'"):
        open_summary_writer("unused")
