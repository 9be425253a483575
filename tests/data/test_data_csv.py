"""CSV tables (issue 12): header, label column, numeric features, class names, errors naming line and column."""

import numpy as np
import pytest
import torch

from unimargin.data import dataset_info, load_dataset
from unimargin.data.csvfile import class_names, read_table


def _write(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n", encoding="utf-8")
    return path


def _wine_csv(path):
    from sklearn.datasets import load_wine

    w = load_wine()
    names = np.array(w.target_names)[w.target]
    return _write(path, list(w.feature_names) + ["cultivar"], [list(r) + [n] for r, n in zip(w.data, names)]), w


def test_wine_csv_string_labels_tabular(tmp_path):
    f, w = _wine_csv(tmp_path / "wine.csv")
    s = load_dataset("csv", path=f)
    assert s.layout == "tabular" and s.in_shape == (13,) and s.classes == ["class_0", "class_1", "class_2"]
    assert len(s.x_train) + len(s.x_test) == 178 and dataset_info("csv").default_model == "mlp"
    # every row is an exact copy (float32) of the source table, with its label
    x = torch.cat([s.x_train, s.x_test]).double()
    y = torch.cat([s.y_train, s.y_test])
    src = torch.from_numpy(w.data.astype(np.float32)).double()
    dist = torch.cdist(x, src, compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.equal(torch.from_numpy(w.target)[dist.argmin(1)], y) and dist.min(1).values.max() == 0
    assert s.preprocessing["label_column"] == "cultivar" and s.preprocessing["feature_columns"] == list(w.feature_names)


def test_label_column_by_name_and_int_labels_sorted_numerically(tmp_path):
    rows = [[lab, i, i * 2.5] for i, lab in enumerate([10, 2, 2, 10, 2, 10, 7, 7, 7, 10])]
    f = _write(tmp_path / "t.csv", ["target", "a", "b"], rows)
    s = load_dataset("csv", path=f, label_column="target", test_fraction=0.3)
    assert s.classes == ["2", "7", "10"] and s.in_shape == (2,)
    x, y = torch.cat([s.x_train, s.x_test]), torch.cat([s.y_train, s.y_test])
    by_a = {int(a): s.classes[int(c)] for a, c in zip(x[:, 0], y)}
    assert by_a == {i: str(r[0]) for i, r in enumerate(rows)}
    with pytest.raises(ValueError, match=r"no label column 'label'; columns are \['target', 'a', 'b'\]"):
        load_dataset("csv", path=f, label_column="label")


def test_separate_test_file_in_any_column_order(tmp_path):
    train = _write(tmp_path / "tr.csv", ["a", "b", "y"], [[i, -i, "cat" if i % 2 else "dog"] for i in range(8)])
    test = _write(tmp_path / "te.csv", ["y", "id", "b", "a"], [["dog", 1, -100, 100], ["cat", 2, -101, 101]])
    s = load_dataset("csv", path=train, test_data=test)
    assert len(s.x_train) == 8 and s.x_test.tolist() == [[100.0, -100.0], [101.0, -101.0]]
    assert [s.classes[i] for i in s.y_test] == ["dog", "cat"]
    with pytest.raises(ValueError, match="either test_data or test_fraction"):
        load_dataset("csv", path=train, test_data=test, test_fraction=0.2)
    bad = _write(tmp_path / "bad.csv", ["a", "b", "y"], [[0, 0, "dog"], [1, 1, "eel"]])
    with pytest.raises(ValueError, match=r"bad.csv: line 3, column 'y': label 'eel' is not one of the training classes"):
        load_dataset("csv", path=train, test_data=bad)
    nob = _write(tmp_path / "nob.csv", ["a", "y"], [[0, "dog"], [1, "cat"]])
    with pytest.raises(ValueError, match=r"nob.csv: missing feature column\(s\) \['b'\]"):
        load_dataset("csv", path=train, test_data=nob)


@pytest.mark.parametrize(
    "rows,match",
    [
        ([[1, 2, "a"], [3, "", "b"]], r"line 3, column 'f2': missing value"),
        ([[1, 2, "a"], ["x7", 4, "b"]], r"line 3, column 'f1': 'x7' is not a number"),
        ([[1, "nan", "a"], [3, 4, "b"]], r"line 2, column 'f2': 'nan' is not a finite number"),
        ([[1, 2, "a"], [3, 4, ""]], r"line 3, column 'y': missing label"),
    ],
)
def test_bad_cells_name_line_and_column(tmp_path, rows, match):
    f = _write(tmp_path / "bad.csv", ["f1", "f2", "y"], rows * 3)
    with pytest.raises(ValueError, match="bad.csv: " + match):
        load_dataset("csv", path=f)


def test_structural_errors(tmp_path):
    (tmp_path / "ragged.csv").write_text("a,b,y\n1,2,x\n1,2\n")
    with pytest.raises(ValueError, match="ragged.csv: line 3 has 2 cells but the header has 3 columns"):
        load_dataset("csv", path=tmp_path / "ragged.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv: empty file; expected a header row"):
        load_dataset("csv", path=tmp_path / "empty.csv")
    (tmp_path / "hdr.csv").write_text("a,b,y\n")
    with pytest.raises(ValueError, match="hdr.csv: no data rows"):
        load_dataset("csv", path=tmp_path / "hdr.csv")
    (tmp_path / "dup.csv").write_text("a,a,y\n1,2,x\n")
    with pytest.raises(ValueError, match=r"dup.csv: duplicate column names \['a'\]"):
        load_dataset("csv", path=tmp_path / "dup.csv")
    (tmp_path / "latin.csv").write_bytes("a,y\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.csv: not UTF-8"):
        load_dataset("csv", path=tmp_path / "latin.csv")
    (tmp_path / "one.csv").write_text("y\nx\n")
    with pytest.raises(ValueError, match="one.csv: no feature columns"):
        load_dataset("csv", path=tmp_path / "one.csv")
    with pytest.raises(ValueError, match="csv: file .*nope.csv does not exist"):
        load_dataset("csv", path=tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="csv: path .* is required"):
        load_dataset("csv")
    tiny = _write(tmp_path / "tiny.csv", ["a", "y"], [[0, "p"], [1, "q"]])
    with pytest.raises(ValueError, match="csv .*tiny.csv: 2 samples are too few to split off a test set"):
        load_dataset("csv", path=tiny)


def test_bom_blank_lines_quotes_and_data_dir(tmp_path):
    (tmp_path / "q.csv").write_bytes('\ufeffa,"b, with comma",y\n1,2,"x"\n\n3,4e-1,z\n5,6,x\n7,8,z\n'.encode("utf-8"))
    t = read_table(tmp_path / "q.csv")
    assert t.feature_columns == ["a", "b, with comma"] and t.lines.tolist() == [2, 4, 5, 6]
    assert t.x.tolist() == [[1, 2], [3, pytest.approx(0.4)], [5, 6], [7, 8]] and t.labels.tolist() == ["x", "z", "x", "z"]
    s = load_dataset("csv", data_dir=tmp_path, test_fraction=0.5)
    assert s.classes == ["x", "z"] and len(s.x_test) == 2


def test_class_names_sorting():
    assert class_names(np.array(["10", "2", "-1", "2"])) == ["-1", "2", "10"]
    assert class_names(np.array(["b", "a", "10"])) == ["10", "a", "b"]


def test_wine_per_feature_standardisation_same_for_csv_and_npz(tmp_path):
    """issue 12: an (N, d) npz and the same table as CSV load to the same tensors and stats."""
    from unimargin.data.transforms import feature_stats

    f, w = _wine_csv(tmp_path / "wine.csv")
    np.savez(tmp_path / "wine.npz", x=w.data, y=w.target, classes=np.array(w.target_names))
    a, b = load_dataset("csv", path=f, seed=3), load_dataset("npz", path=tmp_path / "wine.npz", seed=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test) and a.classes == b.classes
    ma, sa = feature_stats(a.x_train)
    assert ma.shape == (13,) and torch.equal(sa, feature_stats(b.x_train)[1])
