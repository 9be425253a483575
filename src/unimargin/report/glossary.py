"""The report's glossary: one entry per metric the report shows, taken from the one
vocabulary (:data:`unimargin.metrics.keys.KEYS` label + description), plus the few
statistical and protocol terms of the report itself (which are not metrics, so they are
not in KEYS). Every metric name in the report's tables links to its entry
(:func:`unimargin.report.labels.metric_link`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from unimargin.metrics.keys import KEYS

from .labels import direction_arrow, glossary_anchor, metric_name, unit_suffix

__all__ = ["GlossaryEntry", "CORE_KEYS", "REPORT_TERMS", "glossary_entries"]

# Always explained, in this order: the figures of the verdict.
CORE_KEYS = ("sw", "cw", "uni", "t_star", "learned_threshold", "uni_at_learned", "uni_deployed",
             "val_t_star", "uni_loss_learned")

# Terms of the report, not metrics: (anchor suffix, term, explanation).
REPORT_TERMS = (
    ("delta", "Δ (paired difference)", "head − baseline on the same seed (same initialisation, same "
     "batches, same split); in points for accuracies (percentage points, not percent of the value)."),
    ("ci", "95% CI", "95 % t-interval of the mean Δ over seeds (n − 1 degrees of freedom, SPEC §3.9): "
     "the range of true mean differences the seeds leave plausible."),
    ("holm", "Holm-adjusted p", "two-sided paired t-test p, adjusted (Holm step-down) for the number of "
     "heads compared with the baseline on the same metric, SPEC §3.9."),
    ("sign-flip", "sign-flip p", "exact permutation p over all 2^n sign patterns of the Δ; assumes only "
     "symmetry; its smallest possible value is 2/2^n (0.25 with 3 seeds)."),
    ("rule", "better / worse / no detectable difference", "better or worse only with at least 3 paired "
     "seeds, Holm-adjusted p < 0.05 and Δ not identical on every seed; otherwise no detectable "
     "difference (which is not proof of equality: read the interval), SPEC §3.9."),
    ("splits", "train / validation / test split", "the model trains on the train split; every choice "
     "(epoch, threshold, tuned learning rate) uses the validation split; the test split is evaluated "
     "once, at the end, for this report, SPEC §3.9."),
)


@dataclass(frozen=True)
class GlossaryEntry:
    anchor: str
    term: str
    text: str


def _key_entry(key: str) -> GlossaryEntry:
    meta = KEYS[key]
    details = []
    arrow = direction_arrow(key)
    if arrow:
        details.append(f"{arrow} {'higher' if arrow == '↑' else 'lower'} is better")
    unit = unit_suffix(key) or {"score": "score units", "feature": "feature-space units"}.get(meta.unit, "")
    if unit:
        details.append(f"unit {unit}")
    suffix = f" ({'; '.join(details)})" if details else ""
    return GlossaryEntry(glossary_anchor(key), f"{metric_name(key)} (`{key}`)", meta.description + suffix + ".")


def glossary_entries(keys: Iterable[str] = ()) -> list[GlossaryEntry]:
    """The core verdict keys, then every other known metric key in ``keys`` (in order),
    then the report's statistical terms."""
    wanted = list(dict.fromkeys([*CORE_KEYS, *(k for k in keys if k in KEYS)]))
    entries = [_key_entry(k) for k in wanted]
    entries += [GlossaryEntry(f"glossary-{anchor}", term, text) for anchor, term, text in REPORT_TERMS]
    return entries
