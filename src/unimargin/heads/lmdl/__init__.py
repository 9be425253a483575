"""lmdl (SPEC §2.6): ``terms.py`` is THE formula, ``fused.py`` the single-process fast step,
``head.py`` the head and the one dispatch rule between them (:func:`step_path`)."""

from .fused import LMDLFusedStep, LMDLPresentResult, LMDLPresentStep, LMDLStep, lmdl_fused_step, lmdl_present_step
from .head import FUSED_MAX_K, PRESENT_MIN_K, PRESENT_MIN_K_PYTHON, LMDLHead, autograd_path, step_path
from .terms import AGGREGATIONS, LMDLTerms, lmdl_terms

__all__ = ["LMDLHead", "lmdl_terms", "LMDLTerms", "lmdl_fused_step", "LMDLFusedStep", "LMDLStep",
           "LMDLPresentStep", "LMDLPresentResult", "lmdl_present_step", "AGGREGATIONS", "FUSED_MAX_K", "PRESENT_MIN_K", "PRESENT_MIN_K_PYTHON",
           "step_path", "autograd_path"]
