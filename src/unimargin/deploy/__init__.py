"""Deploying one threshold (DESIGN.md "Who uses it" 3; docs/deploy.md).

- :mod:`unimargin.deploy.calibrate`: choose the threshold on the run's validation split for
  an objective (``uni``, ``far=α``, ``frr=β``; SPEC §3.8), with test figures and 95%
  Clopper–Pearson intervals; stored as ``calibration.json`` in the run directory.
  :func:`~unimargin.deploy.calibrate.deployment` is the one rule for the threshold
  ``predict`` and ``export`` use (given > calibration.json > learned > fitted on validation).
- :mod:`unimargin.deploy.export`: one ONNX (or torch.export ``.pt2``) graph from the raw
  model input to ``scores``, ``label`` (−1 = rejected) and ``rejection_score``.
"""

from .calibrate import (CALIBRATION_FILE, Deployment, calibrate_run, clopper_pearson,
                        deployment, load_calibration, parse_objective, select_threshold)
from .export import export_run  # noqa: E402

__all__ = ["CALIBRATION_FILE", "calibrate_run", "load_calibration", "parse_objective",
           "select_threshold", "clopper_pearson", "Deployment", "deployment", "export_run"]
