"""`compare --reuse` is safe (issue 11 item 5): data changed in place retrains, a moved compare
directory keeps its training curves, a completed run whose checkpoint is gone is retrained
(not an abort), and the fingerprint itself tells content changes from copies."""

import json
import os
import shutil

from experiment_procs import write_blobs_npz

from unimargin.cli import main
from unimargin.experiments import run_compare
from unimargin.experiments.runner import FINGERPRINT_FILE, data_fingerprint

HEADS = ["softmax", "bce-u"]
# No --batch-size: the engine picks the batch and (2-epoch runs) the warm-up from the data,
# and reuse must still recognise the saved runs.
TINY = ["--heads", ",".join(HEADS), "--seeds", "2", "--epochs", "2", "--feat-dim", "8",
        "--jobs", "1"]


def _write_npz(path, seed: int) -> None:
    write_blobs_npz(path, seed=seed, dim=5, spread=3, n_train=40, n_test=20)


def _records(out):
    return {(r["head"], r["seed"]): r for r in json.loads((out / "records.json").read_text())}


def _npz_compare(data, out, *extra):
    return main(["compare", "--dataset", "npz", "--data-dir", str(data), "--out", str(out), *TINY, *extra])


def test_data_changed_in_place_retrains(tmp_path, capsys):
    data, out = tmp_path / "data.npz", tmp_path / "cmp"
    _write_npz(data, seed=0)
    assert _npz_compare(data, out) == 0
    first = _records(out)
    # Unchanged data: every run is reused.
    assert _npz_compare(data, out, "--reuse") == 0
    assert all(r["reused"] for r in _records(out).values())
    # Same file name, same size, same mtime, other content: the content hash sees it.
    stat = data.stat()
    _write_npz(data, seed=1)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data.stat().st_size == stat.st_size and data.stat().st_mtime_ns == stat.st_mtime_ns
    capsys.readouterr()
    assert _npz_compare(data, out, "--reuse") == 0
    err = capsys.readouterr().err
    assert err.count("data changed since the saved run") == len(first), err
    second = _records(out)
    assert not any(r["reused"] for r in second.values())
    assert any(second[k]["final"]["sw"] != first[k]["final"]["sw"] or
               second[k]["final"]["uni"] != first[k]["final"]["uni"] for k in first)
    # The saved fingerprint now describes the new file.
    for record in second.values():
        saved = json.loads((out / record["out"] / FINGERPRINT_FILE).read_text())
        assert saved == data_fingerprint({"dataset": "npz", "data_dir": str(data)})


def test_moved_compare_directory_keeps_training_curves(tmp_path, monkeypatch):
    data = tmp_path / "data.npz"
    _write_npz(data, seed=0)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert _npz_compare(data, "cmp") == 0  # a relative --out, as a user types it
    records = json.loads((work / "cmp" / "records.json").read_text())
    assert all(not os.path.isabs(r["out"]) and r["out"].startswith("runs") for r in records)

    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(str(work / "cmp"), str(moved))
    monkeypatch.chdir(tmp_path)
    result = run_compare(dataset="npz", heads=HEADS, seeds=2, epochs=2, out=moved, reuse=True,
                         overrides={"data_dir": str(data), "feat_dim": 8}, log=lambda m: None)
    assert all(r.reused for r in result.records)
    for record in result.records:  # the curves are read from the moved run directories
        assert [row["epoch"] for row in record.history] == [1, 2]
        assert os.path.samefile(record.out, moved / "runs" / record.head / f"seed{record.seed}")
    # The CLI's report of the moved directory is complete too.
    assert _npz_compare(data, moved, "--reuse") == 0
    assert (moved / "training_curves.png").exists() and (moved / "report.md").exists()
    for record in json.loads((moved / "records.json").read_text()):
        assert (moved / record["out"] / "metrics.jsonl").exists()


def test_completed_run_without_checkpoint_is_retrained(tmp_path, capsys):
    data, out = tmp_path / "data.npz", tmp_path / "cmp"
    _write_npz(data, seed=0)
    assert _npz_compare(data, out) == 0
    first = _records(out)
    gone = out / first[("bce-u", 1)]["out"] / "checkpoints" / "last.pt"
    assert gone.exists()
    gone.unlink()
    capsys.readouterr()
    assert _npz_compare(data, out, "--reuse") == 0
    err = capsys.readouterr().err
    assert "bce-u seed 1: checkpoint does not load" in err, err
    second = _records(out)
    assert {k: r["reused"] for k, r in second.items()} == {k: k != ("bce-u", 1) for k in first}
    assert gone.exists()
    # Retrained from scratch with the same seed and data: the same numbers.
    assert second[("bce-u", 1)]["final"]["sw"] == first[("bce-u", 1)]["final"]["sw"]
    assert (out / "report.md").exists()


def test_fingerprint_hashes_content_and_ignores_copies(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "a.bin").write_bytes(b"x" * 100)
    (data / "big.bin").write_bytes(b"y" * 300)
    options = {"dataset": "folder", "data_dir": str(data)}
    first = data_fingerprint(options, hash_limit=200)
    assert [f["path"] for f in first["files"]] == ["a.bin", "big.bin"]
    assert "sha256" in first["files"][0] and "sha256" not in first["files"][1]  # over the limit
    from unimargin.experiments.runner import _same_data

    # A copy (same bytes; the small file with another mtime) is the same data.
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)  # copy2: keeps mtimes
    os.utime(copy / "a.bin", ns=(1, 1))
    assert _same_data(first, data_fingerprint({**options, "data_dir": str(copy)}, hash_limit=200))
    # A rewritten small file is not.
    (data / "a.bin").write_bytes(b"z" * 100)
    assert not _same_data(first, data_fingerprint(options, hash_limit=200))
    # A large file is identified by size and mtime.
    os.utime(data / "big.bin", ns=(5, 5))
    (data / "a.bin").write_bytes(b"x" * 100)
    assert not _same_data(first, data_fingerprint(options, hash_limit=200))
    assert not _same_data(None, first)
    assert not _same_data(first, {"dataset": "folder", "files": [], "missing": str(data)})
