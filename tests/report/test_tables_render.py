"""Report building blocks on synthetic run records (no training): diverged runs are
excluded from means and paired tests, every section is rendered, HTML is self-contained."""

import base64
import dataclasses
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from unimargin.report.compare import CompareResult, build_compare_document
from unimargin.report.plots import pca_2d
from unimargin.report.records import RunOutputs, RunRecord
from unimargin.report.render import Document, markdown_inline_to_html
from unimargin.report.stats import paired_t_test
from unimargin.report.tables import paired_table, summary_table
from unimargin.report.verdict import paired_for, summary_for

SEEDS = [0, 1, 2]
HEADS = ["softmax", "lmdl", "bce-u"]


def _final(rng, sw):
    uni = sw - rng.uniform(0.01, 0.05)
    return {"sw": sw, "cw": sw - 0.005, "uni": uni, "sep_auc": rng.uniform(0.9, 1.0),
            "t_star": rng.normal(), "learned_threshold": None, "uni_at_learned": None,
            "intra_class_cosine": rng.uniform(0.5, 0.9), "compactness_ratio": rng.uniform(0.2, 0.5)}


def _history(rng, epochs=3):
    return [{"epoch": e, "status": "ok", "train": {"loss": 2.0 / e, "terms": {}},
             "test": {"sw": 0.5 + 0.1 * e, "uni": 0.4 + 0.1 * e}} for e in range(1, epochs + 1)]


def synthetic_records():
    """3 heads × 3 seeds; lmdl seed 1 diverged with an absurd sw that must never be averaged."""
    rng = np.random.default_rng(0)
    records = []
    for seed in SEEDS:
        for head, sw in zip(HEADS, [0.90, 0.92, 0.91]):
            final = _final(rng, sw + rng.normal(0, 0.01))
            if head == "bce-u":
                final.update(learned_threshold=final["t_star"] + 0.1, uni_at_learned=final["uni"] - 0.004,
                             uni_loss_learned=0.004, threshold_distance=0.1, threshold_distance_rel=0.05)
            status = "completed"
            if head == "lmdl" and seed == 1:
                status, final = "diverged", dict(final, sw=123.0, uni=99.0)
            records.append(RunRecord(head=head, seed=seed, status=status, final=final, runtime_s=1.0 + seed,
                                     epochs_completed=3 if status == "completed" else 1,
                                     message="loss is NaN at epoch 2" if status == "diverged" else "",
                                     history=_history(rng)))
    return records


def test_diverged_runs_are_excluded_from_means_and_pairs():
    records = synthetic_records()
    ok_sw = [r.final["sw"] for r in records if r.head == "lmdl" and r.seed != 1]
    summary = summary_for(records, "lmdl", "sw")
    assert summary.n == 2
    assert summary.mean == pytest.approx(np.mean(ok_sw))
    assert summary.std == pytest.approx(np.std(ok_sw, ddof=1))

    seeds, test = paired_for(records, "lmdl", "softmax", "sw")
    assert seeds == [0, 2]
    softmax_sw = {r.seed: r.final["sw"] for r in records if r.head == "softmax"}
    lmdl_sw = {r.seed: r.final["sw"] for r in records if r.head == "lmdl"}
    reference = paired_t_test([lmdl_sw[s] for s in (0, 2)], [softmax_sw[s] for s in (0, 2)])
    assert test.t_p_value == pytest.approx(reference.t_p_value)
    assert test.mean_difference == pytest.approx(np.mean([lmdl_sw[s] - softmax_sw[s] for s in (0, 2)]))

    table = summary_table(records)
    row = next(r for r in table.rows if r[0] == "`lmdl`")
    assert row[1] == "2/3"
    assert "12300" not in " ".join(row)  # the diverged sw (123 → 12300 %) never shows up in a mean
    paired = paired_table(records, "sw")
    lmdl_row = next(r for r in paired.rows if r[0] == "`lmdl`")
    assert lmdl_row[1] == "2" and "s1" not in lmdl_row[2]


def _synthetic_outputs(head, seed, k=4, n=120, d=6):
    g = torch.Generator().manual_seed(seed + 10 * len(head))
    labels = torch.arange(n) % k
    features = torch.randn(n, d, generator=g) + 3 * torch.nn.functional.one_hot(labels, d).float()
    scores = features[:, :k]
    return RunOutputs(head=head, seed=seed, features=features, scores=scores, labels=labels, t_star=0.5,
                      learned_threshold=0.7 if head == "bce-u" else None,
                      centroid_margins=torch.rand(k, generator=g) if head != "bce-u" else None)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.headings, self.tables, self._in_heading = [], [], 0, None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag in ("h2", "h3"):
            self._in_heading = ""
        if tag == "table":
            self.tables += 1

    def handle_data(self, data):
        if self._in_heading is not None:
            self._in_heading += data

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self._in_heading is not None:
            self.headings.append(self._in_heading)
            self._in_heading = None


def test_compare_document_sections_markdown_and_html(tmp_path):
    records = synthetic_records()
    result = CompareResult(
        dataset="synthetic", heads=HEADS, seeds=SEEDS, epochs=3, records=records,
        outputs=[_synthetic_outputs(h, 0) for h in HEADS],
        settings={h: {"optimizer": "sgd", "lr": 0.1, "head_params": {}} for h in HEADS},
        class_names=["a", "b", "c", "d"], command="unimargin compare --dataset synthetic", out=str(tmp_path),
        setup={"model": "mlp", "feat_dim": 6, "batch_size": 32, "n_train": 10, "n_test": 120, "num_classes": 4},
    )
    md_path, html_path = build_compare_document(result).write(tmp_path)
    markdown = md_path.read_text()
    for section in ["## Verdict", "## Glossary", "## Summary", "## Separability and feature geometry",
                    "## Paired comparison with softmax", "## Learned threshold vs t*",
                    "## Plots", "## Per-metric tables", "## Runtime", "## Diverged or failed runs",
                    "## Optimiser settings", "## Reproduce"]:
        assert section in markdown, section
    assert "Open set" not in markdown  # no held-out classes in this result
    assert "loss is NaN at epoch 2" in markdown and "diverged" in markdown
    assert "unimargin compare --dataset synthetic" in markdown
    for png in ["training_curves.png", "score_histograms.png", "features_pca.png", "centroid_margins.png"]:
        assert f"]({png})" in markdown
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    collector = _Collector()
    collector.feed(html_path.read_text())
    assert len(collector.images) == 4
    assert all(src.startswith("data:image/png;base64,") for src in collector.images)
    assert base64.b64decode(collector.images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Learned threshold vs t*: deploying one threshold" in collector.headings and collector.tables >= 10


def test_pca_matches_sklearn_up_to_sign():
    decomposition = pytest.importorskip("sklearn.decomposition")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=g) @ torch.randn(5, 5, generator=g)
    ours = pca_2d(x).double().numpy()
    reference = decomposition.PCA(n_components=2).fit_transform(x.double().numpy())
    for j in range(2):
        sign = np.sign(np.dot(ours[:, j], reference[:, j]))
        np.testing.assert_allclose(ours[:, j], sign * reference[:, j], atol=1e-4)
    with pytest.raises(ValueError, match="features"):
        pca_2d(torch.empty(0, 3))


def test_inline_markup_is_escaped():
    assert markdown_inline_to_html("a <b> `x<y` **bold**") == "a &lt;b&gt; <code>x&lt;y</code> <strong>bold</strong>"
    md = Document("t").table(None).paragraph("x | y").to_markdown(".")
    assert "x | y" in md
    with pytest.raises(ValueError, match="level"):
        Document("t").heading("h", level=9)


def test_settings_come_from_the_runs_and_disagreement_is_flagged():
    from unimargin.report.compare import settings_from_records
    from unimargin.report.tables import settings_table

    base = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
            "schedule": "cosine", "warmup_epochs": 1, "head_params": {}, "milestones": None}
    records = [RunRecord("softmax", 0, "completed", config=dict(base)),
               RunRecord("softmax", 1, "completed", config=dict(base)),
               RunRecord("arcface", 0, "completed", config=dict(base, lr=0.05)),
               RunRecord("arcface", 1, "completed", config=dict(base, lr=0.01))]
    fallback = {"softmax": dict(base, lr=0.5), "arcface": dict(base, lr=0.5)}
    settings = settings_from_records(records, fallback)
    assert settings["softmax"]["lr"] == 0.05 and "varies_across_seeds" not in settings["softmax"]
    assert settings["arcface"]["varies_across_seeds"] is True
    rows = {row[0].split()[0]: row for row in settings_table(settings).rows}
    assert "differs between seeds" in rows["`arcface`"][0] and rows["`softmax`"][0] == "`softmax`"


def test_the_training_data_condition_is_stated_only_when_there_is_one():
    from unimargin.report.compare import condition_sentence

    plain = synthetic_records()
    assert condition_sentence(plain) is None
    long_tail = [dataclasses.replace(r, config={"imbalance": 0.01, "label_noise": None}) for r in plain]
    text = condition_sentence(long_tail)
    assert "`--imbalance 0.01`" in text and "clean and balanced" in text and "noise" not in text
    noisy = [dataclasses.replace(r, config={"imbalance": None, "label_noise": 0.2}) for r in plain]
    assert "`--label-noise 0.2`" in condition_sentence(noisy)
    mixed = long_tail[:3] + [dataclasses.replace(r, config={"imbalance": 0.1}) for r in plain[3:]]
    assert "differs between runs (0.01, 0.1)" in condition_sentence(mixed)
