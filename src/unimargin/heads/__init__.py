"""Classification heads (SPEC §2): one file per family behind one contract (base.py).

``build_head(name, num_classes, feat_dim, **hparams)`` / ``list_heads()``; names softmax,
normface, cosface, arcface, center, lmdl, bce-u, bce-d.
"""

from .base import Head, HeadOutput
from .bce import BCEDiverseHead, BCEUnifiedHead, bce_loss
from .center import CenterHead
from .lmdl import LMDLHead, lmdl_terms
from .normalized import ArcFaceHead, CosFaceHead, NormFaceHead, arcface_positive_cos
from .registry import build_head, head_hparams, list_heads
from .softmax import SoftmaxHead

__all__ = [
    "Head",
    "HeadOutput",
    "build_head",
    "list_heads",
    "head_hparams",
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
