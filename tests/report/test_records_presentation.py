"""Records of both engine generations, the tune.json reader, and the presentation rules of
the report: every Markdown construct renders in the HTML, every metric link has its
glossary anchor, decision metrics and geometry in separate tables, no count tables."""

import json
import re
from html.parser import HTMLParser

import pytest
import torch

from unimargin.metrics.confusion import confusion_matrix, per_class_accuracy, worst_confused_pairs
from unimargin.report.compare import CompareResult, build_compare_document
from unimargin.report.records import RunRecord, history_split, read_tuning, record_from_summary
from unimargin.report.render import Document, markdown_inline_to_html
from unimargin.report.tables import (DECISION_METRICS, confused_pairs_table, geometry_table, metric_keys,
                                     open_set_tables, per_class_table, summary_table, tuning_tables)

CLASSES = ["zero", "one", "two"]


def _per_class(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(30) % 3
    preds = torch.where(torch.rand(30, generator=g) < 0.3, (labels + 1) % 3, labels)
    cm = confusion_matrix(labels, preds, 3)
    return {"classes": CLASSES, "accuracy": per_class_accuracy(cm), "confusion": cm.tolist(),
            "worst_confused": [list(t) for t in worst_confused_pairs(cm, 5)]}


def _new_summary(head, seed, sw):
    final = {"n": 30, "sw": sw, "cw": sw - 0.05, "uni": sw - 0.1, "uni_deployed": sw - 0.12, "t_star": 0.3,
             "val_t_star": 0.28, "sep_auc": 0.95, "intra_class_cosine": 0.8, "inter_class_angle_min": 41.234,
             "compactness_ratio": 0.4, "centroid_margin_min": 1.5,
             "reject_auroc": 0.8, "reject_open_set_accuracy": 0.7, "reject_auroc_energy": 0.85,
             "reject_open_set_accuracy_energy": 0.72, "verif_roc_auc": 0.9, "verif_n_genuine": 40}
    return {"status": "completed", "message": "", "epochs_completed": 2, "selected_epoch": 2, "select_epoch": "last",
            "runtime_s": 1.0, "final": final, "final_val": {"sw": sw + 0.01}, "per_class": _per_class(seed),
            "splits": {"n_train": 80, "n_val": 10, "n_test": 30, "n_unknown": 12}, "config": {"batch_size": 16}}


def _write_run(tmp_path, head, seed, summary, section):
    run = tmp_path / head / f"seed{seed}"
    run.mkdir(parents=True)
    rows = [{"epoch": e, "status": "ok", "train": {"loss": 1.0 / e}, section: {"sw": 0.5 + 0.1 * e, "uni": 0.4}}
            for e in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def new_records(tmp_path):
    records = []
    for seed in range(3):
        for head, sw in (("softmax", 0.80), ("lmdl", 0.85)):
            summary = _new_summary(head, seed, sw + 0.01 * seed)
            run = _write_run(tmp_path, head, seed, summary, "val")
            records.append(record_from_summary(head, seed, summary, run))
    return records


def test_new_and_old_records(tmp_path):
    record = new_records(tmp_path)[0]
    assert record.splits["n_test"] == 30 and record.selected_epoch == 2 and record.select_epoch == "last"
    assert record.final_val == {"sw": 0.81} and record.per_class["classes"] == CLASSES
    assert "reject_auroc_energy" in record.open_set and "reject_auroc" not in record.final
    assert history_split(record.history) == "val"
    assert json.loads(json.dumps(record.to_json()))["splits"]["n_val"] == 10
    # an old summary: no split info, per-epoch "test"; per_class nested in final is moved out
    old_summary = {"status": "completed", "final": {"sw": 0.8, "per_class": _per_class(0)}, "runtime_s": 1}
    run = _write_run(tmp_path / "old", "softmax", 0, old_summary, "test")
    old = record_from_summary("softmax", 0, old_summary, run)
    assert old.splits == {} and old.selected_epoch is None and "per_class" not in old.final
    assert old.per_class["classes"] == CLASSES and history_split(old.history) == "test"
    assert history_split([]) is None


def test_read_tuning(tmp_path):
    assert read_tuning(tmp_path) is None
    (tmp_path / "tune").mkdir()
    path = tmp_path / "tune" / "tune.json"
    path.write_text(json.dumps({"metric": "val.sw", "trials_per_head": 2, "heads": {"lmdl": {
        "space": {"lr": {"low": 1e-4, "high": 1e-1, "log": True}},
        "trials": [{"number": 1, "params": {"lr": 0.01}, "value": 0.91, "state": "COMPLETE"},
                   {"number": 0, "params": {"lr": 0.001}, "value": 0.85, "state": "COMPLETE"}],
        "best": {"lr": 0.01}, "best_value": 0.91}}}))
    tuning = read_tuning(tmp_path)
    assert tuning.metric == "val.sw" and tuning.trials_per_head == 2
    (study,) = tuning.studies
    assert [t["number"] for t in study.trials] == [0, 1] and study.best == {"lr": 0.01}
    space, trials = tuning_tables(tuning)
    assert "[0.0001, 0.1] (log)" in space.rows[0][1] and space.rows[0][4] == "91.00"
    assert "**(chosen)**" in trials.rows[1][4] and "(chosen)" not in trials.rows[0][4]
    path.write_text("{not json")
    with pytest.raises(ValueError, match="tune.json: not valid JSON"):
        read_tuning(tmp_path)
    path.write_text(json.dumps({"heads": {"lmdl": {"trials": "x"}}}))
    with pytest.raises(ValueError, match=r"heads\['lmdl'\].trials"):
        read_tuning(tmp_path)


def test_tables_split_decision_geometry_and_open_set(tmp_path):
    records = new_records(tmp_path)
    assert "n" not in metric_keys(records) and "verif_n_genuine" not in metric_keys(records)
    summary = summary_table(records)
    assert len(summary.headers) == 2 + len(DECISION_METRICS)
    assert "[deployed Uni](#glossary-uni-deployed) ↑ (%)" in summary.headers
    geometry = geometry_table(records)
    assert any("(°)" in h for h in geometry.headers)
    row = geometry.rows[0]
    assert "**41.2 ± 0.0**" in row  # angle: 1 decimal (equal means: both bold)
    tables = open_set_tables(records)
    scores = [r[1] for r in tables[-1].rows]
    assert scores == ["`max_score`", "`max_score`", "`energy`", "`energy`"]
    assert tables[-1].rows[2][2].startswith("0.8500")


def test_per_class_tables_sum_over_seeds(tmp_path):
    records = new_records(tmp_path)
    total = sum(torch.tensor(r.per_class["confusion"]) for r in records if r.head == "lmdl")
    expected = per_class_accuracy(total)
    table = per_class_table(records)
    assert [r[0] for r in table.rows] == [f"`{c}`" for c in CLASSES]
    assert [float(r[2]) for r in table.rows] == pytest.approx([100 * a for a in expected], abs=0.005)
    assert "summed over 3 seeds" in table.caption
    pairs = confused_pairs_table(records)
    t, p, n = worst_confused_pairs(total, 5)[0]
    assert f"`{CLASSES[t]}` → `{CLASSES[p]}`: {n}" in pairs.rows[1][2]


class _Html(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.hrefs, self.text, self._skip = set(), [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag in ("code", "pre", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("code", "pre", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def test_html_renders_every_markdown_construct_and_links_resolve(tmp_path):
    records = new_records(tmp_path / "runs")
    result = CompareResult(dataset="toy", heads=["softmax", "lmdl"], seeds=[0, 1, 2], epochs=2, records=records,
                           out=str(tmp_path), class_names=CLASSES, unknown_class_names=["u"],
                           settings={"softmax": {"optimizer": "sgd"}, "lmdl": {"optimizer": "sgd"}})
    md_path, html_path = build_compare_document(result).write(tmp_path)
    parser = _Html()
    parser.feed(html_path.read_text())
    text = "".join(parser.text)
    assert "**" not in text and "*Optimiser" not in text and "](#" not in text
    assert not re.search(r"(?<![\w(])\*[A-Za-z]", text), re.search(r".{40}(?<![\w(])\*[A-Za-z].{40}", text)
    anchors = [h[1:] for h in parser.hrefs if h.startswith("#")]
    assert "glossary-sw" in anchors and "glossary-uni-deployed" in anchors
    assert set(anchors) <= parser.ids, set(anchors) - parser.ids
    markdown = md_path.read_text()
    for anchor in {a for a in anchors if a.startswith("glossary-")}:  # the Markdown has the anchors too
        assert f'<a id="{anchor}"></a>' in markdown, anchor
    # the verdict comes first, before the glossary and every table
    assert markdown.index("## Verdict") < markdown.index("## Glossary") < markdown.index("## Summary")
    assert "### sw ↑ (%)" in markdown and "### n\n" not in markdown
    assert "](confusion.png)" in markdown and (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_inline_markup():
    assert markdown_inline_to_html("*Optimiser settings*") == "<em>Optimiser settings</em>"
    assert markdown_inline_to_html("t* and t* stay") == "t* and t* stay"
    assert markdown_inline_to_html("Uni(t*) − Uni(t_l) = a * b") == "Uni(t*) − Uni(t_l) = a * b"
    assert markdown_inline_to_html("[SW](#glossary-sw) ↑") == '<a href="#glossary-sw">SW</a> ↑'
    assert markdown_inline_to_html("**[a](#b) `c`**") == '<strong><a href="#b">a</a> <code>c</code></strong>'
    html = Document("t").heading("`lmdl` vs `softmax`", level=3).to_html()
    assert "<h3 id=\"lmdl-vs-softmax\"><code>lmdl</code> vs <code>softmax</code></h3>" in html
