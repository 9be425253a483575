"""The one evaluation (SPEC §3): outputs of a model, the flat metric dict, open-set metrics
and the threshold choice. Used by the engine (per epoch and the final test evaluation),
``unimargin evaluate``, ``predict`` and ``compare``; every key it writes is in
:data:`unimargin.metrics.keys.KEYS`.

- :func:`compute_outputs`: features and scores of ``x`` (eval mode, no grad).
- :func:`evaluate_outputs`: closed-set keys (§3.1–§3.6).
- :func:`choose_threshold`: the head's learned threshold when it has one, else t* of the
  given split — callers pass the *validation* split, never the test split (§2.9, §3.9).
- :func:`open_set_metrics`: verification (``verif_*``) on unknown-class features and
  rejection (``reject_*``) of unknown samples by the max score (§3.7).
- :func:`evaluate_open_set`: what the engine records at the end of training — verification
  and, for every rejection score (``max_score``, ``centroid_cosine``, ``energy``; §2.9),
  rejection AUROC and open-set accuracy at a threshold chosen on validation.
- :func:`evaluate_model`: all of the above for one model and one split, optionally with
  the nested ``per_class`` entry (accuracy per class, confusion matrix, worst confused
  pairs; :mod:`unimargin.metrics.confusion`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from unimargin import distributed as udist

from .confusion import per_class_summary, predictions
from .geometry import feature_geometry
from .keys import flat_key, rejection_key
from .rejection import (OPEN_SET_KNOWN_REJECT_RATE, REJECTION_SCORES, needs_features,
                        rejection_metrics, rejection_score, score_defined,
                        threshold_for_reject_rate)
from .uniform import positive_negative, separability_auc, uniform_accuracy
from .verification import VERIFICATION_FIELDS, open_set_rejection, verification


@torch.no_grad()
def compute_outputs(model: nn.Module, head: nn.Module, x: torch.Tensor, batch_size: int = 256,
                    distributed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, d) = ``model(x)`` and scores S = ``head.scores(f)`` (N, K): eval mode, no
    grad, float32, on the CPU. ``model`` is any module whose ``forward(x)`` returns features
    (a bare backbone, or the engine's UnimarginNet, which also standardises the input).

    With ``distributed=True`` under torch.distributed, each process evaluates a contiguous
    1/P share of ``x`` and the results are gathered exactly (no padding duplicates).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = (model.training, head.training)
    model.eval()
    head.eval()
    try:
        device = next((p.device for p in head.parameters()), torch.device("cpu"))
        share = x
        if distributed and udist.is_distributed():
            share = torch.tensor_split(x, udist.world_size())[udist.rank()]
        feats, scores = [], []
        for start in range(0, share.shape[0], batch_size):
            f = model(share[start:start + batch_size].to(device)).float()
            feats.append(f)
            scores.append(head.scores(f).float())
        if feats:
            features, all_scores = torch.cat(feats), torch.cat(scores)
        else:
            features = torch.empty(0, head.feat_dim, device=device)
            all_scores = torch.empty(0, head.num_classes, device=device)
        if distributed and udist.is_distributed():
            features = udist.all_gather_cat(features)
            all_scores = udist.all_gather_cat(all_scores)
        return features.cpu(), all_scores.cpu()
    finally:
        model.train(was_training[0])
        head.train(was_training[1])


def _float_or_none(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def learned_threshold(head: nn.Module) -> float | None:
    """The head's learned unified threshold as a float (bce-u: b, bce-d: 0), else None."""
    t = head.threshold
    return None if t is None else float(t.detach().float().cpu())


def evaluate_outputs(features: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                     head: nn.Module, *, deployed_threshold: float | None = None) -> dict:
    """Closed-set flat keys of SPEC §3 for one evaluated set: n, sw, cw, uni, t_star,
    learned_threshold (+ uni_at_learned, uni_loss_learned, threshold_distance[_rel]; None
    for heads without one), sep_auc, the §3.6 geometry keys, and — when
    ``deployed_threshold`` (t* fitted on validation) is given — ``val_t_star`` and
    ``uni_deployed`` = Uni of this set at that threshold."""
    learned = learned_threshold(head)
    res = uniform_accuracy(scores, labels, threshold=learned).to_dict()
    out = {"n": int(labels.shape[0]), "sw": res["sw"], "cw": res["cw"], "uni": res["uni"]}
    for field in ("threshold", "uni_at_threshold", "uni_loss", "threshold_distance",
                  "threshold_distance_rel"):
        out[flat_key("uniform", field)] = _float_or_none(res[field])
    out["learned_threshold"] = learned
    out["sep_auc"] = float(separability_auc(scores, labels))
    if deployed_threshold is not None:
        out["val_t_star"] = float(deployed_threshold)
        out["uni_deployed"] = float(
            uniform_accuracy(scores, labels, threshold=float(deployed_threshold)).uni_at_threshold)
    geometry = feature_geometry(features, labels, head=head)
    out.update({flat_key("geometry", k): _float_or_none(v) for k, v in geometry.items()})
    return out


def choose_threshold(head: nn.Module, scores: torch.Tensor, labels: torch.Tensor,
                     split: str = "validation") -> tuple[float, str]:
    """SPEC §2.9: the learned threshold when the head has one, else t* of ``scores`` /
    ``labels`` — pass the validation split; ``split`` names it in the returned source."""
    learned = learned_threshold(head)
    if learned is not None:
        return learned, "learned"
    return float(uniform_accuracy(scores, labels).threshold), f"t* ({split})"


def _verification_keys(unknown_features: torch.Tensor, unknown_labels: torch.Tensor) -> dict:
    """``verif_*`` of unknown-class feature pairs; None-valued (``verif_available`` False)
    with fewer than 2 unknown classes (no impostor pair exists)."""
    out: dict = {}
    n_unknown_classes = int(torch.unique(unknown_labels).numel()) if unknown_labels.numel() else 0
    out["verif_available"] = n_unknown_classes >= 2
    if out["verif_available"]:
        for key, value in verification(unknown_features, unknown_labels).items():
            out[flat_key("verification", key)] = value
    else:
        out.update({flat_key("verification", key): None for key in VERIFICATION_FIELDS})
    return out


def open_set_metrics(head: nn.Module, known_scores: torch.Tensor, known_labels: torch.Tensor,
                     unknown_features: torch.Tensor, unknown_scores: torch.Tensor,
                     unknown_labels: torch.Tensor, threshold: float | None = None,
                     threshold_source: str | None = None) -> dict:
    """SPEC §3.7 on held-out classes: verification (``verif_*``) of unknown-class feature
    pairs and rejection (``reject_*``) of unknown samples by max-score thresholding at
    ``threshold`` (default :func:`choose_threshold` on the known scores given). With fewer
    than 2 unknown classes no impostor pair exists: ``verif_available`` is False and the
    verification keys are None; rejection is still computed. The per-score keys of the
    other rejection scores come from :func:`evaluate_open_set`."""
    out = _verification_keys(unknown_features, unknown_labels)
    if threshold is None:
        threshold, threshold_source = choose_threshold(head, known_scores, known_labels)
    rejection = open_set_rejection(known_scores, known_labels, unknown_scores, threshold)
    for key, value in rejection.items():
        out[flat_key("open_set_rejection", key)] = value
    out["reject_threshold"] = float(threshold)
    out["reject_threshold_source"] = threshold_source or "given"
    return out


class SplitOutputs(NamedTuple):
    """Features, scores and labels of one evaluated split."""

    features: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def rejection_threshold(name: str, val: SplitOutputs, val_r: torch.Tensor | None = None,
                        head: nn.Module | None = None) -> tuple[float, str]:
    """(threshold, source) of rejection score ``name``, from the validation split ``val``.

    ``max_score``: with ``head``, :func:`choose_threshold` (its learned threshold when it has
    one); else t* of validation (SPEC §2.9, §3.2). Other scores have no learned counterpart
    and no per-class t*: the largest threshold that rejects at most
    :data:`~unimargin.metrics.rejection.OPEN_SET_KNOWN_REJECT_RATE` (5%) of the known
    validation samples (the 95%-TPR point of out-of-distribution detection; exact, by the
    sorting deploy.calibrate's objectives use). ``val_r``: the score of ``val`` if already
    computed.
    """
    if name == "max_score":
        if head is not None:
            return choose_threshold(head, val.scores, val.labels)
        return float(uniform_accuracy(val.scores, val.labels).threshold), "t* (validation)"
    if val_r is None:
        raise ValueError(f"rejection_threshold({name!r}) needs the validation scores val_r")
    t = threshold_for_reject_rate(val_r, OPEN_SET_KNOWN_REJECT_RATE)
    return t, f"known reject rate {OPEN_SET_KNOWN_REJECT_RATE:g} (validation)"


def _rejection_threshold(name: str, head: nn.Module, val_r, val) -> tuple[float | None, str]:
    """:func:`rejection_threshold`; without a validation split only a learned threshold."""
    if val is not None:
        return rejection_threshold(name, val, val_r, head)
    learned = learned_threshold(head) if name == "max_score" else None
    if learned is not None:
        return learned, "learned"
    return None, "none (no validation split)"


def _score_of(name: str, out: SplitOutputs, means) -> torch.Tensor:
    return rejection_score(name, out.scores, out.features, means)


def open_set_score_keys(head: nn.Module, name: str, *, test: SplitOutputs, unknown: SplitOutputs,
                        val: SplitOutputs | None = None, class_means=None) -> dict:
    """The ``reject_*`` keys of one rejection score (SPEC §2.9, §3.7; flat names from
    :func:`~unimargin.metrics.keys.rejection_key`): AUROC of known-test vs unknown samples
    (threshold-free), and at the validation threshold of :func:`_rejection_threshold` the
    open-set accuracy, known accept and unknown reject rates. None-valued when the score is
    undefined here: ``energy`` for a head without softmax logits (bce-u, bce-d; SPEC §2.9
    "CE heads"), ``centroid_cosine`` without the training ``class_means``."""
    fields = ("auroc", "open_set_accuracy", "known_accept_rate", "unknown_reject_rate",
              "threshold")
    if not score_defined(name, head) or (needs_features(name) and class_means is None):
        return {rejection_key(f, name): None for f in fields}
    val_r = _score_of(name, val, class_means) if val is not None else None
    threshold, source = _rejection_threshold(name, head, val_r, val)
    p, n = positive_negative(test.scores, test.labels)
    figures = rejection_metrics(_score_of(name, test, class_means), p > n,
                                _score_of(name, unknown, class_means), threshold)
    figures["threshold"] = threshold
    out = {rejection_key(f, name): figures[f] for f in fields}
    if name == "max_score":
        out.update(reject_n_known=figures["n_known"], reject_n_unknown=figures["n_unknown"],
                   reject_threshold_source=source)
    return out


def evaluate_open_set(model: nn.Module, head: nn.Module, *, x_val, y_val, x_test, y_test,
                      x_unknown, y_unknown, class_means=None, batch_size: int = 256,
                      distributed: bool = False) -> dict:
    """The open-set keys of a trained model (SPEC §2.9, §3.7), every choice on validation.

    - ``verif_*``: verification of unknown-class feature pairs (:func:`open_set_metrics`).
    - For each rejection score of :data:`~unimargin.metrics.rejection.REJECTION_SCORES`
      (``max_score`` keys unsuffixed: ``reject_auroc``, ``reject_open_set_accuracy``, ...;
      the others suffixed: ``reject_auroc_energy``, ``reject_threshold_centroid_cosine``,
      ...): rejection AUROC of the known test samples vs the unknown samples, and the
      open-set accuracy at the threshold chosen on ``x_val``/``y_val`` (known classes) by
      :func:`open_set_score_keys`. ``centroid_cosine`` uses ``class_means`` (K×d, the
      *training* features' class means; None -> its keys are None).

    ``x_val`` may be None (a run without validation split): AUROC is still reported, the
    thresholds only where the head has a learned one. Test data never chooses anything.
    """
    def outputs(x, y):
        f, s = compute_outputs(model, head, x, batch_size, distributed=distributed)
        return SplitOutputs(f, s, torch.as_tensor(y).long())

    val = outputs(x_val, y_val) if x_val is not None and len(x_val) else None
    return open_set_keys(head, outputs(x_test, y_test), outputs(x_unknown, y_unknown), val,
                          class_means)


def open_set_keys(head, test: SplitOutputs, unknown: SplitOutputs, val: SplitOutputs | None,
                  class_means) -> dict:
    """:func:`evaluate_open_set` on outputs already computed (no second forward pass)."""
    out = _verification_keys(unknown.features, unknown.labels)
    for name in REJECTION_SCORES:
        out.update(open_set_score_keys(head, name, test=test, unknown=unknown, val=val,
                                       class_means=class_means))
    return out


def evaluate_model(model: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   x_unknown: torch.Tensor | None = None, y_unknown: torch.Tensor | None = None,
                   threshold: float | None = None, threshold_source: str | None = None,
                   deployed_threshold: float | None = None, batch_size: int = 256,
                   distributed: bool = False, per_class: bool = False,
                   x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
                   class_means: torch.Tensor | None = None) -> dict:
    """Closed-set keys of ``x``, ``y`` plus, when unknown-class data is given, the open-set
    keys. With the validation split (``x_val``, ``y_val``) they are those of
    :func:`evaluate_open_set` (every rejection score, thresholds chosen on validation;
    ``class_means`` for ``centroid_cosine``); without it, max-score rejection at
    ``threshold`` (default :func:`choose_threshold` on ``x`` itself — pass the validation
    threshold when ``x`` is the test split). With ``per_class=True`` also
    ``out["per_class"]`` = :func:`~unimargin.metrics.confusion.per_class_summary` of the
    closed-set predictions (top class, ties wrong as in SW): a nested entry, not a flat
    key."""
    features, scores = compute_outputs(model, head, x, batch_size, distributed=distributed)
    out = evaluate_outputs(features, scores, y, head, deployed_threshold=deployed_threshold)
    if per_class:
        out["per_class"] = per_class_summary(y, predictions(scores, y), int(scores.shape[1]))
    if x_unknown is not None and y_unknown is not None and len(x_unknown) > 0:
        uf, us = compute_outputs(model, head, x_unknown, batch_size, distributed=distributed)
        if x_val is not None and y_val is not None and len(x_val) > 0:
            vf, vs = compute_outputs(model, head, x_val, batch_size, distributed=distributed)
            out.update(open_set_keys(head, SplitOutputs(features, scores, y),
                                      SplitOutputs(uf, us, y_unknown), SplitOutputs(vf, vs, y_val),
                                      class_means))
        else:
            out.update(open_set_metrics(head, scores, y, uf, us, y_unknown, threshold,
                                        threshold_source))
    return out
