"""Tables from CSV files: a header row, numeric feature columns and one label column.

Dataset ``csv`` (layout tabular, default model ``mlp``):
- ``path`` (or ``data_dir``: the file, or a directory holding exactly one ``.csv``): the
  training table, comma-separated, UTF-8 (a byte-order mark is fine), a header row naming
  the columns. Blank lines are skipped.
- ``label_column``: the name of the label column (default: the last column). Every other
  column is a numeric feature (ints, floats, ``1e-3``); a missing, non-numeric, NaN or
  infinite cell is an error naming the file, the line and the column.
- Labels may be strings or integers; the classes are the distinct labels, sorted
  (numerically when every label is an integer), and they are the class names.
- ``test_data``: a second CSV with the same columns (any order; extra columns are ignored)
  used as the test split; its labels must be training classes. Without it, a seeded
  stratified split with ``test_fraction`` (default 0.2) and ``seed`` (default 0).
Output: x (N, d) float32 (standardised per feature by the engine), y int64.
``preprocessing`` records label_column and feature_columns, so ``predict`` reads new tables
the same way (:mod:`unimargin.data.inputs`).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .registry import DatasetSplits, register_dataset, split_train_test, resolve_data_file

DEFAULT_TEST_FRACTION = 0.2
_INT = re.compile(r"^[+-]?\d+$")


@dataclass
class Table:
    """A parsed CSV: ``x`` (N, d) float32 in ``feature_columns`` order, ``labels`` (N,) strings
    (None when the label column is absent), ``lines`` (N,) the file line of each row."""

    x: np.ndarray
    labels: np.ndarray | None
    feature_columns: list[str]
    label_column: str | None
    lines: np.ndarray
    path: Path


def read_table(path: str | os.PathLike, label_column: str | None = None, feature_columns: list[str] | None = None,
               require_label: bool = True) -> Table:
    """Parse one CSV file (module docstring for the format).

    ``feature_columns=None``: every column but the label column is a feature (training).
    Given (``predict``, the test file), exactly those columns are read by name, the others
    ignored; the label column is then optional unless ``require_label``. Numeric conversion
    is one vectorised ``astype`` over all cells; only on failure are the cells scanned to name
    the first bad one.
    """
    path = Path(path)
    header, rows, lines = _read_rows(path)
    index = {name: i for i, name in enumerate(header)}
    if label_column is None:
        label_column = header[-1] if feature_columns is None else None
    if label_column is not None and label_column not in index and (require_label or feature_columns is None):
        raise ValueError(f"{path}: no label column {label_column!r}; columns are {header}")
    has_label = label_column is not None and label_column in index
    if feature_columns is None:
        feature_columns = [c for c in header if c != label_column]
        if not feature_columns:
            raise ValueError(f"{path}: no feature columns besides the label column {label_column!r}")
    missing = [c for c in feature_columns if c not in index]
    if missing:
        raise ValueError(f"{path}: missing feature column(s) {missing}; the model was trained on {feature_columns}")
    cells = np.asarray(rows, dtype=object).reshape(len(rows), len(header)) if rows else np.empty((0, len(header)), object)
    feats = cells[:, [index[c] for c in feature_columns]].astype(str)
    x = _numeric(np.char.strip(feats), feature_columns, lines, path)
    labels = None
    if has_label:
        labels = np.char.strip(cells[:, index[label_column]].astype(str))
        empty = np.flatnonzero(labels == "")
        if empty.size:
            raise ValueError(f"{path}: line {lines[empty[0]]}, column {label_column!r}: missing label")
    return Table(x, labels, list(feature_columns), label_column if has_label else None, lines, path)


def _read_rows(path: Path) -> tuple[list[str], list[list[str]], np.ndarray]:
    if not path.is_file():
        raise ValueError(f"csv: file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows, lines = [], []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue  # blank line
                if header is not None and len(row) != len(header):
                    raise ValueError(
                        f"{path}: line {reader.line_num} has {len(row)} cells but the header has {len(header)} columns"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from exc
    if header is None or not any(h.strip() for h in header):
        raise ValueError(f"{path}: empty file; expected a header row naming the columns")
    header = [h.strip() for h in header]
    if "" in header:
        raise ValueError(f"{path}: column {header.index('') + 1} of the header has no name")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ValueError(f"{path}: duplicate column names {dupes} in the header")
    if not rows:
        raise ValueError(f"{path}: no data rows after the header")
    return header, rows, np.asarray(lines, dtype=np.int64)


def _numeric(cells: np.ndarray, columns: list[str], lines: np.ndarray, path: Path) -> np.ndarray:
    try:
        values = cells.astype(np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values.astype(np.float32)
    for r, c in np.ndindex(cells.shape):  # error path only: find the first bad cell
        text = str(cells[r, c])
        where = f"{path}: line {lines[r]}, column {columns[c]!r}"
        if text == "":
            raise ValueError(f"{where}: missing value")
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"{where}: {text!r} is not a number") from None
        if not np.isfinite(v):
            raise ValueError(f"{where}: {text!r} is not a finite number")
    raise AssertionError("unreachable")  # pragma: no cover


def class_names(labels: np.ndarray) -> list[str]:
    """The sorted distinct labels: numerically when all are integers ("2" < "10"), else as text."""
    distinct = np.unique(labels)
    if all(_INT.match(v) for v in distinct):
        return [str(v) for v in sorted({int(v) for v in distinct})]
    return [str(v) for v in distinct]


def label_ids(labels: np.ndarray, classes: list[str], table: Table) -> np.ndarray:
    """Label strings -> indices of ``classes``; an unknown label is an error naming its line.

    Vectorised over samples: only the distinct labels are looked up (``np.unique`` inverse).
    Integer labels compare as integers, so "07" in a test file is class "7".
    """
    distinct, inverse = np.unique(labels, return_inverse=True)
    numeric = bool(classes) and all(_INT.match(c) for c in classes)
    index = {c: i for i, c in enumerate(classes)}
    ids = np.empty(len(distinct), dtype=np.int64)
    for j, v in enumerate(distinct):
        key = str(int(v)) if numeric and _INT.match(v) else str(v)
        if key not in index:
            row = int(np.flatnonzero(inverse == j)[0])
            raise ValueError(
                f"{table.path}: line {table.lines[row]}, column {table.label_column!r}: label {str(v)!r} "
                f"is not one of the training classes {classes}"
            )
        ids[j] = index[key]
    return ids[inverse.reshape(-1)]


@register_dataset("csv", default_model="mlp", layout="tabular")
def load_csv(
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    label_column: str | None = None,
    test_data: str | os.PathLike | None = None,
    test_fraction: float | None = None,
    seed: int | None = None,
) -> DatasetSplits:
    """A CSV table: header row, numeric features, one label column (module docstring)."""
    train = read_table(resolve_data_file("csv", ".csv", path, data_dir), label_column)
    classes = class_names(train.labels)
    y = label_ids(train.labels, classes, train)
    x = torch.from_numpy(train.x)
    if test_data is not None:
        if test_fraction is not None:
            raise ValueError("csv: give either test_data or test_fraction, not both")
        test = read_table(Path(test_data).expanduser(), train.label_column, train.feature_columns)
        x_test, y_test = torch.from_numpy(test.x), torch.from_numpy(label_ids(test.labels, classes, test))
        x_train, y_train = x, torch.from_numpy(y)
    else:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        tr, te = split_train_test(y, fraction, seed, f"csv {train.path}")
        x_train, y_train, x_test, y_test = x[tr], torch.from_numpy(y[tr]), x[te], torch.from_numpy(y[te])
    out = DatasetSplits(x_train, y_train, x_test, y_test, classes)
    out.preprocessing = {"label_column": train.label_column, "feature_columns": train.feature_columns}
    return out
