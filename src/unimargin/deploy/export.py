"""Export a trained run as one inference graph (ONNX or torch.export ``.pt2``).

The graph goes from the raw model input (what :func:`unimargin.data.load_dataset` returns
for the run's dataset; the input standardisation of the run is *inside* the graph) to

- ``scores``: (N, K) float32, the class metrics S of SPEC §1 (no training margin);
- ``label``: (N,) int64, argmax_k S[i, k] when the rejection score r_i > threshold, else −1
  (SPEC §2.9);
- ``rejection_score``: (N,) float32, r_i (SPEC §2.9; :mod:`unimargin.metrics.rejection`).

The batch dimension is dynamic. The threshold is baked into the graph; it is chosen by
:func:`unimargin.deploy.calibrate.deployment` — the same order ``unimargin predict`` uses:
the ``threshold`` argument; the run's ``calibration.json``; the learned threshold of heads
that have one (bce-u: b; bce-d: 0; max_score only); else fitted on the run's validation
split (max_score: t*; other scores: reject 5% of the known validation samples). The class
means of ``centroid_cosine`` are the ones stored in the checkpoint. ONNX files carry metadata_props
(class names, threshold and its source, rejection score, input shape, preprocessing outside
the graph, unimargin version, head); ``.pt2`` files carry the same dict as the extra file
``unimargin.json`` (``torch.export.load(path, extra_files={"unimargin.json": ""})``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings

import torch
from torch import nn

import unimargin
from unimargin.metrics.rejection import (check_rejection_score, needs_features,
                                         rejection_score_unchecked)

from .calibrate import deployment, run_splits

FORMATS = ("onnx", "pt2")
METADATA_FILE = "unimargin.json"  # the metadata's name inside a .pt2 archive
OUTPUT_NAMES = ("scores", "label", "rejection_score")


class InferenceGraph(nn.Module):
    """Raw input -> (scores, label, rejection_score) for one run and one threshold.

    ``model`` is the run's UnimarginNet (``model(x)`` standardises and returns features).
    The head's score formula is called without its input validation (which synchronises
    on the data and cannot be traced); the inputs of a deployed graph are the caller's
    responsibility.
    """

    def __init__(self, model: nn.Module, head: nn.Module, rejection: str, threshold: float,
                 class_means: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.head = head
        self.rejection = check_rejection_score(rejection)
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))
        means = None if class_means is None else torch.as_tensor(class_means, dtype=torch.float32)
        if needs_features(rejection) and means is None:
            raise ValueError(f"rejection score {rejection!r} needs the training class means")
        self.register_buffer("class_means", means)

    def forward(self, x: torch.Tensor):
        f = self.model(x).float()
        # the validated Head.scores has data-dependent checks that cannot be traced
        s = self.head.scores_unchecked(f).float()
        r = rejection_score_unchecked(self.rejection, s, f, self.class_means)
        pred = s.argmax(dim=1)
        label = torch.where(r > self.threshold, pred, torch.full_like(pred, -1))
        return s, label, r


def _preprocessing(cfg) -> str:
    """What the caller must do before feeding the graph (everything else is inside)."""
    steps = [f"float32 input shaped (N, *input_shape) as unimargin.data.load_dataset({cfg.dataset!r}) "
             "returns it (e.g. images: pixel / 255 in [0, 1], channels first)"]
    size = getattr(cfg, "image_size", None)
    if size:
        steps.append(f"resize images to {size}")
    channels = getattr(cfg, "channels", None)
    if channels:
        steps.append(f"convert images to {channels} channel(s)")
    steps.append("the run's input standardisation is inside the graph" if cfg.normalize_input
                 else "no input standardisation")
    return "; ".join(steps)


def build_metadata(run, threshold: float, source: str, rejection: str) -> dict:
    """The metadata stored with an exported graph (all values are strings, as ONNX needs)."""
    cfg = run.config
    return {
        "class_names": json.dumps([str(c) for c in run.classes]),
        "threshold": repr(float(threshold)),
        "threshold_source": source,
        "rejection_score": rejection,
        "input_shape": json.dumps(["N", *[int(v) for v in run.in_shape]]),
        "preprocessing": _preprocessing(cfg),
        "outputs": "scores (N,K) float32; label (N,) int64, -1 = rejected (rejection_score <= "
                   "threshold); rejection_score (N,) float32",
        "unimargin_version": unimargin.__version__,
        "head": cfg.head,
        "dataset": cfg.dataset,
        "epoch": str(run.epoch),
    }


def export_run(run_dir, format: str = "onnx", out=None, threshold: float | None = None, *,
               rejection_score: str | None = None, overwrite: bool = False) -> dict:
    """Write the inference graph of a trained run to ``out`` (see the module docstring).

    ``format``: ``"onnx"`` (needs the ``export`` extra: onnx, onnxscript; onnxruntime to run
    it) or ``"pt2"`` (torch.export). ``rejection_score``: default the calibrated one, else
    ``max_score``. Refuses to replace an existing ``out`` unless ``overwrite=True``; the file
    is written atomically. Returns the metadata dict plus ``path`` and ``format``.
    """
    from unimargin.io import atomic_write_bytes
    from unimargin.train import load_run

    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if out is None:
        raise ValueError("out: the output file path is required")
    out = os.fspath(out)
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"out: {out!r} already exists; pass overwrite=True (--overwrite) to "
                         f"replace it")
    if os.path.isdir(out):
        raise ValueError(f"out: {out!r} is a directory, expected a file path")
    run = load_run(run_dir)
    splits = run_splits(run)  # the example input of the exporter comes from it
    chosen = deployment(run, rejection_score=rejection_score, threshold=threshold,
                        splits=lambda: splits)
    graph = InferenceGraph(run.model, run.head, chosen.rejection_score, chosen.threshold,
                           chosen.class_means).eval()
    meta = build_metadata(run, chosen.threshold, chosen.source, chosen.rejection_score)
    with warnings.catch_warnings():
        # torch.export's own deprecation notices (pytree internals), not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        data = _graph_bytes(graph, format, splits, meta)
    atomic_write_bytes(data, out)
    return {**meta, "path": out, "format": format}


def _graph_bytes(graph: nn.Module, format: str, splits, meta: dict) -> bytes:
    example = splits[2][:2]
    if example.shape[0] < 2:
        example = splits[0][:2]
    # batch ≥ 2 in the example so the exporter does not specialise the dimension to 1
    dynamic = {"x": {0: torch.export.Dim("batch")}}
    if format == "onnx":
        return _onnx_bytes(graph, example, dynamic, meta)
    with torch.no_grad():
        program = torch.export.export(graph, (example,), dynamic_shapes=dynamic)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(meta)})
    return buffer.getvalue()


def _onnx_bytes(graph: nn.Module, example: torch.Tensor, dynamic: dict, meta: dict) -> bytes:
    import onnx  # the `export` extra (checker; torch.onnx needs onnxscript)

    # the exporter logs warnings about optional torchvision ops that do not concern us
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(graph, (example,), input_names=["x"],
                                        output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic,
                                        dynamo=True, verbose=False)
    finally:
        logger.setLevel(level)
    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def read_metadata(path) -> dict:
    """The unimargin metadata of an exported ``.onnx`` or ``.pt2`` file."""
    path = os.fspath(path)
    if path.endswith(".pt2"):
        extra = {METADATA_FILE: ""}
        torch.export.load(path, extra_files=extra)
        return json.loads(extra[METADATA_FILE])
    import onnx

    proto = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


__all__ = ["FORMATS", "InferenceGraph", "build_metadata", "export_run", "read_metadata"]
