"""Metrics for uniform classification, feature geometry and open-set verification (SPEC §3).

Functional core (pure functions on tensors, plain Python numbers out):
:func:`uniform_accuracy`, :func:`positive_negative`, :func:`separability_auc`,
:func:`feature_geometry`, :func:`centroid_margins`, :func:`verification`,
:func:`open_set_rejection`; direction of every key in :data:`HIGHER_IS_BETTER` (keys that
are thresholds or counts are in :data:`NO_DIRECTION`).

Stateful twins (update / compute / reset; exact on one process or many):
:class:`UniformAccuracy`, :class:`SeparabilityAUC`, :class:`FeatureGeometry`,
:class:`Verification`, :class:`OpenSetRejection`.

Definitions, directions and how to read each number: docs/metrics.md.
"""

from .directions import HIGHER_IS_BETTER, NO_DIRECTION
from .geometry import centroid_margins, feature_geometry
from .stateful import (FeatureGeometry, OpenSetRejection, SeparabilityAUC, UniformAccuracy,
                       Verification)
from .uniform import UniformResult, positive_negative, separability_auc, uniform_accuracy
from .verification import open_set_rejection, pair_similarities, verification

__all__ = [
    "HIGHER_IS_BETTER", "NO_DIRECTION",
    "UniformResult", "uniform_accuracy", "positive_negative", "separability_auc",
    "feature_geometry", "centroid_margins",
    "verification", "pair_similarities", "open_set_rejection",
    "UniformAccuracy", "SeparabilityAUC", "FeatureGeometry", "Verification", "OpenSetRejection",
]
