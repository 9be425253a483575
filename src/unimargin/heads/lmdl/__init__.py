"""lmdl (SPEC §2.6): ``terms.py`` is THE formula, ``fused.py`` the single-process fast step,
``head.py`` the head and the one dispatch rule between them (:func:`uses_fused_step`)."""

from .fused import LMDLFusedStep, LMDLStep, lmdl_fused_step
from .head import FUSED_MAX_K, LMDLHead, autograd_path, uses_fused_step
from .terms import AGGREGATIONS, LMDLTerms, lmdl_terms

__all__ = ["LMDLHead", "lmdl_terms", "LMDLTerms", "lmdl_fused_step", "LMDLFusedStep", "LMDLStep",
           "AGGREGATIONS", "FUSED_MAX_K", "uses_fused_step", "autograd_path"]
