"""benchmarks/results/claims.py (the RESULTS.md tables) on synthetic records.json files, run
the way the docs run it: as a script."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from unimargin.report.records import RunRecord

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "claims.py"


def _write(directory: Path, heads_sw_uni: dict, seeds=5, deployed_cost=0.002):
    rng = np.random.default_rng(1)
    rows = []
    for seed in range(seeds):
        for head, (sw, uni) in heads_sw_uni.items():
            final = {"sw": sw + rng.normal(0, 0.002), "uni": uni + rng.normal(0, 0.002)}
            final["uni_deployed"] = final["uni"] - 0.001
            final["uni_at_learned"] = final["uni"] - deployed_cost - rng.uniform(0, 0.001)
            rows.append(RunRecord(head=head, seed=seed, status="completed", final=final,
                                  per_class={"classes": list("abcde"), "accuracy": [0.9, 0.8, 0.7, 0.6, 0.5]}
                                  ).to_json())
    directory.mkdir(parents=True)
    (directory / "records.json").write_text(json.dumps(rows))


def _run(*args):
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True)
    return done.stdout


def test_claims_table_calls_a_clear_gain_better_and_a_tie_no_difference(tmp_path):
    _write(tmp_path / "mnist1d_tuned", {"softmax": (0.95, 0.70), "lmdl": (0.95, 0.80), "bce-u": (0.95, 0.90)})
    out = _run("claims", str(tmp_path))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if "| MNIST-1D |" in line}
    assert "no detectable difference" in rows["[LMDL] lmdl SW > softmax SW"]
    assert rows["[LMDL] lmdl SW > softmax SW"].endswith("| no |")
    uni = rows["[BCE] bce-u Uni > softmax Uni"]
    assert "**better**" in uni and uni.endswith("| yes |") and "+20." in uni
    assert rows["[BCE] bce-u SW ≥ softmax SW"].endswith("| yes |")   # not worse
    assert "within 1 point" in rows["[BCE] bce-u's learned threshold deploys: Uni(t_l) − Uni(t*)"]
    assert "within 1 point" in rows["bce-u with t* of validation deploys: Uni(t*_val) − Uni(t*)"]
    assert "| MNIST 5k | — | — | — | not run yet |" in out


def test_a_deployed_threshold_that_costs_points_is_not_called_deployable(tmp_path):
    _write(tmp_path / "mnist1d_tuned", {"softmax": (0.95, 0.70), "bce-u": (0.95, 0.90)}, deployed_cost=0.03)
    out = _run("claims", str(tmp_path))
    [row] = [line for line in out.splitlines() if "learned threshold deploys" in line and "MNIST-1D |" in line]
    [val] = [line for line in out.splitlines() if "t* of validation deploys" in line and "MNIST-1D |" in line]
    assert val.endswith("| yes |")
    assert "more than 1 point" in row and row.endswith("| no |") and "−3.0" in row


def test_tables_print_heads_pairs_and_tail_classes(tmp_path):
    _write(tmp_path / "c", {"softmax": (0.95, 0.70), "cosface": (0.96, 0.85)})
    out = _run("tables", str(tmp_path / "c"))
    assert "| softmax | 5/5 | 9" in out and "| cosface | uni | +15." in out
    assert "other classes (a–b) | c | d | e |" in out
    assert "| cosface | 85.0 ± 0.0 | 70.0 ± 0.0 | 60.0 ± 0.0 | 50.0 ± 0.0 |" in out
