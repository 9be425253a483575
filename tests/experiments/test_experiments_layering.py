"""The arrows of docs/architecture.md: report/ reads records only (never imports train/ or
experiments/, never loads checkpoints); experiments/ never imports cli/. And one vocabulary:
`evaluate` and `compare` write the same keys for the same numbers."""

import ast
import json
from pathlib import Path

import unimargin
from unimargin.cli import main

SRC = Path(unimargin.__file__).parent


def _imports(package: str) -> dict[str, set[str]]:
    """module file -> every module it imports (absolute names; relative ones resolved)."""
    out = {}
    for path in (SRC / package).rglob("*.py"):
        parts = ["unimargin", *path.relative_to(SRC).with_suffix("").parts]
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts[:-node.level] if path.name != "__init__.py" else parts[:len(parts) - node.level + 1]
                    names.add(".".join(base + ([node.module] if node.module else [])))
                else:
                    names.add(node.module)
        out[str(path.relative_to(SRC))] = names
    return out


def test_report_imports_nothing_from_train_or_experiments():
    found = {f: sorted(n for n in names if n.startswith(("unimargin.train", "unimargin.experiments", "unimargin.cli")))
             for f, names in _imports("report").items()}
    assert {f: n for f, n in found.items() if n} == {}
    for path in (SRC / "report").rglob("*.py"):
        assert "load_run" not in path.read_text() and "load_checkpoint" not in path.read_text(), path


def test_experiments_do_not_import_the_cli():
    found = {f: sorted(n for n in names if n.startswith("unimargin.cli")) for f, names in _imports("experiments").items()}
    assert {f: n for f, n in found.items() if n} == {}


def test_the_import_scan_sees_imports():  # the scan itself can fail
    names = _imports("experiments")["experiments/compare.py"]
    assert "unimargin.experiments.runner" in names and "unimargin.report.compare" in names


def test_evaluate_and_compare_write_the_same_keys(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--dataset", "digits", "--heads", "bce-u", "--seeds", "1", "--epochs", "1",
                 "--limit-train", "300", "--batch-size", "64", "--unknown-classes", "8,9", "--jobs", "1",
                 "--out", str(out)]) == 0
    record = json.loads((out / "records.json").read_text())[0]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / record["out"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    compare_keys = set(record["final"]) | set(record["open_set"])
    assert set(metrics) == compare_keys
    assert any(k.startswith("verif_") for k in metrics) and not any(k.startswith("verification_") for k in metrics)
    for key in ("sw", "uni", "verif_roc_auc", "reject_auroc"):
        assert metrics[key] == record["final"].get(key, record["open_set"].get(key)), key


def test_no_test_hooks_in_production_code():
    # test hooks are TrainCallback objects / before_replace callables, not environment variables
    import pathlib

    src = pathlib.Path(__file__).resolve().parents[2] / "src" / "unimargin"
    offenders = [str(p) for p in src.rglob("*.py") if "UNIMARGIN_TEST_" in p.read_text()]
    assert not offenders, offenders
