"""Metrics for uniform classification, feature geometry and open-set verification (SPEC §3).

Functional core (pure functions on tensors, plain Python numbers out):
:func:`uniform_accuracy`, :func:`positive_negative`, :func:`separability_auc`,
:func:`feature_geometry`, :func:`centroid_margins`, :func:`verification`,
:func:`open_set_rejection`; direction of every key in :data:`HIGHER_IS_BETTER`.

Stateful twins (update / compute / reset; exact on one process or many):
:class:`UniformAccuracy`, :class:`SeparabilityAUC`, :class:`FeatureGeometry`,
:class:`Verification`, :class:`OpenSetRejection`.
"""

from .directions import HIGHER_IS_BETTER, NO_DIRECTION
from .geometry import centroid_margins, feature_geometry
from .uniform import UniformResult, positive_negative, separability_auc, uniform_accuracy

__all__ = [
    "HIGHER_IS_BETTER", "NO_DIRECTION", "UniformResult", "uniform_accuracy",
    "positive_negative", "separability_auc", "feature_geometry", "centroid_margins",
]

try:  # the rest of the package lands in later commits
    from .verification import open_set_rejection, verification  # noqa: F401
    __all__ += ["verification", "open_set_rejection"]
except ImportError:  # pragma: no cover
    pass
try:
    from .stateful import (  # noqa: F401
        FeatureGeometry, OpenSetRejection, SeparabilityAUC, UniformAccuracy, Verification)
    __all__ += ["UniformAccuracy", "SeparabilityAUC", "FeatureGeometry", "Verification",
                "OpenSetRejection"]
except ImportError:  # pragma: no cover
    pass
