"""Classification heads (SPEC §2): one file per family behind one contract (base.py).

``build_head(name, num_classes, feat_dim, **hparams)`` / ``list_heads()``; names softmax,
normface, cosface, arcface, center, lmdl, bce-u, bce-d.
"""

# Import order = registration order = list_heads() order (DESIGN.md).
from .base import Head, HeadOutput
from .registry import build_head, head_hparams, list_heads, recommended_settings, register_head
from .softmax import SoftmaxHead  # isort: skip
from .normalized import ArcFaceHead, CosFaceHead, NormFaceHead, arcface_positive_cos  # isort: skip
from .center import CenterHead  # isort: skip
from .lmdl import LMDLHead, lmdl_terms  # isort: skip
from .bce import BCEDiverseHead, BCEUnifiedHead, bce_loss  # isort: skip

__all__ = [
    "Head",
    "HeadOutput",
    "build_head",
    "list_heads",
    "head_hparams",
    "recommended_settings",
    "register_head",
    "SoftmaxHead",
    "NormFaceHead",
    "CosFaceHead",
    "ArcFaceHead",
    "CenterHead",
    "LMDLHead",
    "BCEUnifiedHead",
    "BCEDiverseHead",
    "lmdl_terms",
    "bce_loss",
    "arcface_positive_cos",
]
