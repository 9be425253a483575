"""records.json rows back into RunRecords: the inverse of RunRecord.to_json."""

import dataclasses
import json

import pytest

from unimargin.report.records import RunRecord, read_records


def _record(out: str) -> RunRecord:
    return RunRecord(head="bce-u", seed=3, status="completed", final={"sw": 0.9, "uni": 0.8},
                     runtime_s=12.5, epochs_completed=4, message="", config={"lr": 0.01}, out=out,
                     open_set={"reject_auroc": 0.6}, param_value=0.5, reused=True,
                     final_val={"sw": 0.91}, per_class={"accuracy": [0.9, 0.8]},
                     splits={"n_test": 100}, selected_epoch=3, select_epoch="best")


def test_from_json_inverts_to_json_field_by_field():
    record = _record("/abs/run")
    back = RunRecord.from_json(json.loads(json.dumps(record.to_json())))
    for f in dataclasses.fields(RunRecord):
        assert getattr(back, f.name) == getattr(record, f.name), f.name


def test_relative_out_resolves_against_the_compare_directory_and_reads_the_history(tmp_path):
    run = tmp_path / "runs" / "bce-u" / "seed3"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "val": {"sw": 0.5}}) + "\n")
    row = _record("runs/bce-u/seed3").to_json()
    (tmp_path / "records.json").write_text(json.dumps([row]))
    [back] = read_records(tmp_path)
    assert back.out == str(run)
    assert back.history == [{"epoch": 0, "val": {"sw": 0.5}}]


def test_bad_records_files_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="records.json"):
        read_records(tmp_path)
    (tmp_path / "records.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_records(tmp_path)
    (tmp_path / "records.json").write_text("{}")
    with pytest.raises(ValueError, match="JSON list"):
        read_records(tmp_path)
    (tmp_path / "records.json").write_text(json.dumps([{"head": "x"}]))
    with pytest.raises(ValueError, match="missing"):
        read_records(tmp_path)
