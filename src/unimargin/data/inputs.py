"""What ``predict`` reads: new inputs, prepared the way the run's training data were.

``preprocessing`` is the plain dict a run saves with its model (``DatasetSplits.
preprocessing``, filled by :func:`unimargin.data.load_dataset`):

| key | meaning |
| --- | --- |
| ``dataset`` | the training dataset's name |
| ``layout`` | ``"tabular"``, ``"signal"`` or ``"image"`` |
| ``in_shape`` | one sample's shape, e.g. ``[13]`` or ``[1, 28, 28]`` |
| ``classes`` | class names, index = class id |
| ``image_size``, ``resize``, ``channels`` | folder datasets: how images were resized and decoded |
| ``label_column``, ``feature_columns`` | csv datasets: the label column and the feature columns, in order |

Standardisation is not applied here: the model holds the training statistics and applies
them itself. Accepted inputs (:func:`read_inputs`):
- a directory of images (searched recursively; when every image sits in a sub-directory
  named after a training class, those names are returned as labels), or one image file
  (.png .jpg .jpeg .bmp .gif .tif .tiff .webp): decoded like the training images (8-bit / 255,
  16-bit / 65535; resized to ``image_size`` when the run used one);
- a CSV file with the training feature columns (by name, any order, extra columns ignored;
  the label column optional, returned as labels when present);
- ``.npz`` (array ``x``, optional ``y``; or a single array), ``.npy``, ``.pt`` (a tensor,
  loaded with ``weights_only=True``): one sample of ``in_shape`` or a batch of them (a
  batch of 1-channel samples may omit the channel dimension: (N, L) for (1, L)).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .csvfile import label_ids, read_table
from .folder import IMAGE_EXTENSIONS, decode_images, parse_image_size

__all__ = ["Inputs", "read_inputs"]


class Inputs(NamedTuple):
    """``x`` float32 (N, *in_shape); ``ids`` (N,) strings naming each sample (file path relative
    to the input directory, CSV data row 1..N, or array index 0..N-1); ``labels`` int64 (N,)
    class ids when the input carries labels, else None."""

    x: torch.Tensor
    ids: list[str]
    labels: torch.Tensor | None


def read_inputs(path: str | os.PathLike, preprocessing: dict) -> Inputs:
    """Read ``path`` for a model trained with ``preprocessing`` (module docstring).

    Raises ValueError naming the file for a missing path, an unsupported kind of file, or
    inputs whose shape differs from the training inputs'.
    """
    path = Path(path).expanduser()
    if not isinstance(preprocessing, dict) or "in_shape" not in preprocessing:
        raise ValueError("read_inputs: preprocessing must be the dict a run saved (with 'in_shape')")
    in_shape = tuple(int(s) for s in preprocessing["in_shape"])
    if not path.exists():
        raise ValueError(f"input {path} does not exist")
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        out = _images(path, preprocessing, in_shape)
    elif path.suffix.lower() == ".csv":
        out = _csv(path, preprocessing)
    elif path.suffix.lower() in (".npz", ".npy", ".pt"):
        out = _arrays(path, preprocessing)
    else:
        raise ValueError(
            f"input {path}: expected a directory of images, an image file ({', '.join(sorted(IMAGE_EXTENSIONS))}), "
            f"a .csv, .npz, .npy or .pt file"
        )
    x = out.x.to(torch.float32)
    if tuple(x.shape) == in_shape:  # one sample without a batch dimension
        x = x.unsqueeze(0)
    elif len(in_shape) > 1 and in_shape[0] == 1 and tuple(x.shape[1:]) == in_shape[1:]:
        x = x.unsqueeze(1)  # a batch of 1-channel samples saved without the channel dim
    if tuple(x.shape[1:]) != in_shape:
        raise ValueError(f"input {path}: samples of shape {tuple(x.shape[1:])}, but the model was trained on {in_shape}")
    if not torch.isfinite(x).all():
        raise ValueError(f"input {path}: contains NaN or Inf")
    ids = out.ids if len(out.ids) == len(x) else [str(i) for i in range(len(x))]
    return Inputs(x, ids, out.labels)


def _images(path: Path, pre: dict, in_shape: tuple[int, ...]) -> Inputs:
    if len(in_shape) != 3:
        raise ValueError(f"input {path}: images given, but the model was trained on inputs of shape {in_shape}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise ValueError(f"input {path}: the directory holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        ids = [p.relative_to(path).as_posix() for p in files]
    else:
        files, ids = [path], [path.name]
    size = parse_image_size(pre.get("image_size"))
    channels = int(pre.get("channels") or in_shape[0])
    size_check = tuple(in_shape[1:])
    try:
        x = decode_images(files, size, pre.get("resize") or "crop", channels)
    except ValueError as exc:
        raise ValueError(f"input {path}: {exc}") from exc
    if size is None and tuple(x.shape[2:]) != size_check:
        raise ValueError(
            f"input {path}: images are {tuple(x.shape[2:])} pixels but the model was trained on {size_check} "
            f"(the run used no image_size, so images are not resized)"
        )
    labels = None
    classes = list(pre.get("classes") or [])
    parents = [Path(i).parent.as_posix() for i in ids]
    if path.is_dir() and classes and all(p in classes for p in parents):
        index = {c: k for k, c in enumerate(classes)}
        labels = torch.tensor([index[p] for p in parents], dtype=torch.int64)
    return Inputs(x, ids, labels)


def _csv(path: Path, pre: dict) -> Inputs:
    columns = pre.get("feature_columns")
    if not columns:
        raise ValueError(f"input {path}: a CSV was given, but the run was not trained on a CSV table "
                         f"(dataset {pre.get('dataset')!r})")
    table = read_table(path, pre.get("label_column"), list(columns), require_label=False)
    labels = None
    if table.labels is not None:
        labels = torch.from_numpy(label_ids(table.labels, list(pre.get("classes") or []), table))
    return Inputs(torch.from_numpy(table.x), [str(i + 1) for i in range(len(table.x))], labels)


def _arrays(path: Path, pre: dict) -> Inputs:
    labels = None
    try:
        if path.suffix.lower() == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, torch.Tensor):
                raise ValueError(f"input {path}: expected a saved tensor, got {type(obj).__name__}")
            arr = obj.numpy()
        elif path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as f:
                if "x" in f.files:
                    arr, y = f["x"], (f["y"] if "y" in f.files else None)
                elif len(f.files) == 1:
                    arr, y = f[f.files[0]], None
                else:
                    raise ValueError(f"input {path}: expected an array 'x' (or a single array), found {sorted(f.files)}")
            if y is not None:
                labels = torch.from_numpy(np.asarray(y).astype(np.int64))
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, TypeError) as exc:
        raise ValueError(f"input {path}: cannot read it ({type(exc).__name__}: {exc})") from exc
    except ValueError as exc:
        if str(exc).startswith(f"input {path}"):
            raise
        raise ValueError(f"input {path}: cannot read it ({exc})") from exc
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"input {path}: expected a numeric array, got dtype {arr.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if labels is not None and (len(labels) != len(x) or (len(labels) and (labels.min() < 0 or labels.max() >= len(pre.get("classes") or [])))):
        raise ValueError(f"input {path}: 'y' must hold one class id in 0..{len(pre.get('classes') or []) - 1} per sample")
    return Inputs(x, [str(i) for i in range(len(x))], labels)
