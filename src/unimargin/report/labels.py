"""How the report names and prints a metric: label, direction arrow, unit, decimals, and the
link to its glossary entry. Everything is derived from the one vocabulary
(:data:`unimargin.metrics.keys.KEYS`: direction, unit, label, description); nothing here
lists metrics a second time.

- Fractions with unit "%" are printed in percent with 2 decimals; angles ("deg") with 1
  decimal and the unit °; unitless ratios and AUCs with 3 (4 for AUCs, whose differences
  are small); score / feature-space values with 3 (their unit is the head's own scale).
- :func:`metric_link` is ``[SW](#glossary-sw)``: Markdown links that :mod:`.render` turns
  into HTML anchors, pointing at the glossary (:mod:`.glossary`) of the same document.
"""

from __future__ import annotations

from unimargin.metrics.keys import KEYS, describe, higher_is_better

from .stats import Summary

__all__ = [
    "PERCENT_KEYS",
    "higher_is_better",
    "direction_arrow",
    "unit_suffix",
    "digits_for",
    "scale_for",
    "metric_name",
    "metric_label",
    "metric_link",
    "glossary_anchor",
    "format_value",
    "format_summary",
    "format_delta",
    "format_p",
]

# Accuracies and rates shown in percent (the records hold fractions in [0, 1]): the unit
# of the one vocabulary, not a second list.
PERCENT_KEYS = frozenset(k for k, v in KEYS.items() if v.unit == "%")
_UNIT_SUFFIX = {"%": "%", "deg": "°", "s": "s"}
_UNIT_DIGITS = {"%": 2, "deg": 1, "s": 1, "count": 0, "score": 3, "feature": 3, "": 3}


def _unit(key: str) -> str:
    try:
        return describe(key).unit
    except ValueError:
        return ""


def direction_arrow(key: str) -> str:
    direction = higher_is_better(key)
    return "↑" if direction is True else "↓" if direction is False else ""


def unit_suffix(key: str) -> str:
    """"%", "°", "s" or "" (score and feature units are the head's own scale: no symbol)."""
    return _UNIT_SUFFIX.get(_unit(key), "")


def digits_for(key: str) -> int:
    """Fixed decimals of ``key``: by unit; AUCs get 4 (differences between heads are small)."""
    if {"auc", "auroc"} & set(key.split("_")):
        return 4
    return _UNIT_DIGITS.get(_unit(key), 3)


def scale_for(key: str) -> float:
    return 100.0 if key in PERCENT_KEYS else 1.0


def metric_name(key: str) -> str:
    """The vocabulary's short label ("SW", "deployed Uni"), else the key itself."""
    return KEYS[key].label if key in KEYS else key


def _decorate(text: str, key: str) -> str:
    arrow = direction_arrow(key)
    unit = {"%": "(%)", "deg": "(°)"}.get(_unit(key), "")
    return " ".join(part for part in (text, arrow, unit) if part)


def metric_label(key: str) -> str:
    """``"sw ↑ (%)"``: key, direction arrow, unit; plain text (headings, plot titles)."""
    return _decorate(key, key)


def glossary_anchor(key: str) -> str:
    """Anchor id of ``key``'s glossary entry: ``glossary-<key>`` with non-alphanumerics as -."""
    return "glossary-" + "".join(c if c.isalnum() else "-" for c in key.lower())


def metric_link(key: str) -> str:
    """``"[SW](#glossary-sw) ↑ (%)"``: the short label linked to the glossary (table headers);
    a key outside the vocabulary has no glossary entry and stays plain."""
    if key not in KEYS:
        return _decorate(f"`{key}`", key)
    return _decorate(f"[{metric_name(key)}](#{glossary_anchor(key)})", key)


def format_value(key: str, value: float | None, digits: int | None = None) -> str:
    if value is None:
        return "—"
    digits = digits_for(key) if digits is None else digits
    return f"{value * scale_for(key):.{digits}f}"


def format_summary(key: str, summary: Summary, digits: int | None = None) -> str:
    """``"97.27 ± 0.12"`` in the key's display unit; ``"… (n=1)"``; ``"—"`` for none."""
    if summary.n == 0 or summary.mean is None:
        return "—"
    digits = digits_for(key) if digits is None else digits
    scale = scale_for(key)
    if summary.std is None:
        return f"{summary.mean * scale:.{digits}f} (n=1)"
    return f"{summary.mean * scale:.{digits}f} ± {summary.std * scale:.{digits}f}"


def format_delta(key: str, value: float | None, digits: int | None = None) -> str:
    """A signed difference in display units: ``"+0.76 points"`` for percentages (percentage
    points, not percent of the value), ``"+2.1°"``, ``"+0.0123"``."""
    if value is None:
        return "—"
    digits = digits_for(key) if digits is None else digits
    text = f"{value * scale_for(key):+.{digits}f}"
    if key in PERCENT_KEYS:
        return text + " points"
    return text + unit_suffix(key)


def format_p(p: float | None) -> str:
    if p is None:
        return "—"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.4f}"
