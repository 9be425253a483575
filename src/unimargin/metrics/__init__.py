"""Metrics for uniform classification, feature geometry and open-set verification (SPEC §3).

Functional core (pure functions on tensors, plain Python numbers out):
:func:`uniform_accuracy`, :func:`positive_negative`, :func:`separability_auc`,
:func:`feature_geometry`, :func:`centroid_margins`, :func:`verification`,
:func:`open_set_rejection`, :func:`confusion_matrix`, :func:`per_class_accuracy`,
:func:`worst_confused_pairs`; the one vocabulary of recorded keys (direction, unit, label,
description) is :data:`KEYS` in :mod:`unimargin.metrics.keys`; :mod:`unimargin.metrics.evaluate`
is the one evaluation (closed set, open set, threshold choice).

Stateful twins (update / compute / reset; exact on one process or many):
:class:`UniformAccuracy`, :class:`SeparabilityAUC`, :class:`FeatureGeometry`,
:class:`Verification`, :class:`OpenSetRejection`, :class:`ConfusionMatrix`.

Definitions, directions and how to read each number: docs/metrics.md.
"""

from .keys import HIGHER_IS_BETTER, KEYS, NO_DIRECTION, MetricKey, describe, higher_is_better
from .confusion import (ConfusionMatrix, confusion_matrix, per_class_accuracy, predictions,
                        worst_confused_pairs)
from .geometry import centroid_margins, feature_geometry
from .stateful import (FeatureGeometry, OpenSetRejection, SeparabilityAUC, UniformAccuracy,
                       Verification)
from .uniform import UniformResult, positive_negative, separability_auc, uniform_accuracy
from .verification import open_set_rejection, pair_similarities, verification

__all__ = [
    "KEYS", "MetricKey", "describe", "higher_is_better", "HIGHER_IS_BETTER", "NO_DIRECTION",
    "UniformResult", "uniform_accuracy", "positive_negative", "separability_auc",
    "feature_geometry", "centroid_margins",
    "verification", "pair_similarities", "open_set_rejection",
    "predictions", "confusion_matrix", "per_class_accuracy", "worst_confused_pairs",
    "UniformAccuracy", "SeparabilityAUC", "FeatureGeometry", "Verification", "OpenSetRejection",
    "ConfusionMatrix",
]
