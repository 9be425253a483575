"""Dataset registry, the :class:`DatasetSplits` container, the splits and the open-set protocol.

Every source registers its loader with ``@register_dataset(name, default_model=...,
augmentation=..., layout=...)``: the dataset brings its own metadata, so a dataset
registered from outside the package trains like a built-in one (``unimargin.models.
default_model`` and ``transforms.default_augmentation`` read this registry). A loader takes
keyword options and returns a :class:`DatasetSplits` holding CPU tensors (``x`` float32,
``y`` int64 labels indexing ``classes``). :func:`load_dataset` adds the options every
dataset shares (``unknown_classes``, ``unknown_from``, ``val_fraction``, ``val_seed``) and
validates what the loader returned (layout, dtypes, label range, at least two classes in the
test and validation splits), so a broken source fails loudly before any training.

Layouts (the shape contract between data and models):
``"tabular"`` x is (N, d), standardised per feature; ``"signal"`` x is (N, C, L) and
``"image"`` x is (N, C, H, W), standardised per channel.

Open-set protocol (SPEC §3.7): the held-out classes are removed from the train, validation
and test splits, the remaining (known) classes are re-indexed ``0..K'-1`` in their original
order, and the test samples of the held-out classes become ``x_unknown`` / ``y_unknown``
(``y_unknown`` indexes ``unknown_class_names``). With ``unknown_from="train+test"`` the
held-out classes' training samples are added to the unknown set as well (they are still
never part of ``x_train``).

Validation split (SPEC §3.9): with ``val_fraction`` set and no validation split of the
dataset's own, :func:`validation_split` (stratified, seeded by ``val_seed`` = the run seed)
moves part of the (known-class) training data to ``x_val`` / ``y_val``.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "LAYOUTS",
    "DatasetInfo",
    "DatasetSplits",
    "register_dataset",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "open_set_split",
    "stratified_split_indices",
    "validation_split",
    "split_train_test",
    "contiguous_labels",
    "layout_of",
]

# x.dim() of each layout; the order is the one error messages list.
LAYOUTS = {"tabular": 2, "signal": 3, "image": 4}
# Options load_dataset itself handles for every dataset (not passed to the loader).
SHARED_OPTIONS = ("unknown_classes", "unknown_from", "val_fraction", "val_seed")


@dataclass(frozen=True)
class DatasetInfo:
    """What a registered dataset declares about itself (:func:`dataset_info`).

    ``layout``: the layouts its loader may return (one for most sources; ``npz`` returns
    whatever its file holds). ``options``: the keyword options of its loader.
    ``augmentation``: ``f(x, generator) -> x`` applied to training batches, or None.
    """

    name: str
    loader: Callable[..., "DatasetSplits"]
    default_model: str
    layout: tuple[str, ...]
    augmentation: Callable | None = None
    options: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        """First line of the loader's docstring."""
        return (inspect.getdoc(self.loader) or "").split("\n", 1)[0]


_REGISTRY: dict[str, DatasetInfo] = {}


def layout_of(x: torch.Tensor) -> str:
    """The layout name of a batch ``x`` from its number of dimensions (ValueError otherwise)."""
    for name, ndim in LAYOUTS.items():
        if x.dim() == ndim:
            return name
    raise ValueError(
        f"inputs must have shape (N, d) (tabular), (N, C, L) (signal) or (N, C, H, W) (image), "
        f"got {tuple(x.shape)}"
    )


@dataclass
class DatasetSplits:
    """Train/validation/test tensors of one dataset (DESIGN.md "Data").

    ``x_*``: float32 tensors of the dataset's layout ((N, d), (N, C, L) or (N, C, H, W));
    ``y_*``: int64 tensors ``(N,)`` indexing ``classes``. ``x_val`` / ``y_val`` are ``None``
    unless the dataset has its own validation split or ``val_fraction`` was given.
    ``x_unknown`` / ``y_unknown`` are ``None`` unless classes were held out; ``y_unknown``
    indexes ``unknown_class_names``. ``preprocessing`` is the plain dict a run saves with its
    model so ``predict`` can read new inputs the same way (see :mod:`unimargin.data.inputs`).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    x_unknown: torch.Tensor | None = None
    y_unknown: torch.Tensor | None = None
    unknown_class_names: list[str] | None = None
    name: str = ""
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    preprocessing: dict = field(default_factory=dict)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, ``x_train.shape[1:]``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of (known) classes, ``len(classes)``."""
        return len(self.classes)

    @property
    def layout(self) -> str:
        """``"tabular"``, ``"signal"`` or ``"image"`` (from ``x_train.dim()``)."""
        return layout_of(self.x_train)

    def __repr__(self) -> str:  # tensors would flood the terminal
        val = "" if self.x_val is None else f", val={tuple(self.x_val.shape)}"
        unknown = "" if self.x_unknown is None else f", unknown={len(self.x_unknown)} ({self.unknown_class_names})"
        return (
            f"DatasetSplits(name={self.name!r}, train={tuple(self.x_train.shape)}{val}, "
            f"test={tuple(self.x_test.shape)}, classes={self.num_classes}{unknown})"
        )


def _check_model_name(name: str, model) -> None:
    from unimargin.models import list_models  # models never imports data at module level

    if not isinstance(model, str) or not (model in list_models() or ":" in model):
        raise ValueError(
            f"register_dataset({name!r}): default_model must be one of {', '.join(list_models())} "
            f"or a 'package.module:factory' entry point, got {model!r}"
        )


def register_dataset(name: str, *, default_model: str, layout, augmentation: Callable | None = None):
    """Decorator registering ``loader(**options) -> DatasetSplits`` under ``name``.

    ``default_model``: the backbone used when none is given (a name of
    ``unimargin.models.list_models()`` or ``"package.module:factory"``). ``layout``: one of
    ``"tabular"``, ``"signal"``, ``"image"``, or a tuple of them when the source's files
    decide (npz); :func:`load_dataset` checks the loader's output against it.
    ``augmentation``: ``f(x, generator) -> x`` for training batches, or None.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_dataset: name must be a non-empty string, got {name!r}")
    layouts = (layout,) if isinstance(layout, str) else tuple(layout)
    bad = [lay for lay in layouts if lay not in LAYOUTS]
    if not layouts or bad:
        raise ValueError(f"register_dataset({name!r}): layout must be one or more of {list(LAYOUTS)}, got {layout!r}")
    _check_model_name(name, default_model)
    if augmentation is not None and not callable(augmentation):
        raise ValueError(f"register_dataset({name!r}): augmentation must be callable or None")

    def decorator(loader):
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        params = inspect.signature(loader).parameters
        clash = sorted(set(params) & set(SHARED_OPTIONS))
        if clash:
            raise ValueError(f"register_dataset({name!r}): options {clash} are handled by load_dataset for every dataset")
        options = tuple(p for p in params if not p.startswith("_"))
        _REGISTRY[name] = DatasetInfo(name, loader, default_model, layouts, augmentation, options)
        return loader

    return decorator


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """The registered metadata of dataset ``name`` (ValueError listing the valid names)."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(list_datasets())}")
    return _REGISTRY[name]


def load_dataset(name: str, **options) -> DatasetSplits:
    """Load dataset ``name`` as tensors.

    Options shared by every dataset: ``unknown_classes`` (class names or indices to hold
    out, see module docstring), ``unknown_from`` (``"test"`` default, or ``"train+test"``),
    ``val_fraction`` (move this stratified fraction of the training data to ``x_val`` unless
    the dataset has its own validation split; default None = no split) and ``val_seed``
    (the seed of that split: the run seed). The other options are the loader's own
    (``dataset_info(name).options``; see docs/data.md). Options passed as ``None`` mean "the
    default", so callers can forward unset settings unconditionally; an option the dataset
    does not take raises ValueError listing the valid ones.
    """
    info = dataset_info(name)
    unknown_classes = options.pop("unknown_classes", None)
    unknown_from = options.pop("unknown_from", None) or "test"
    val_fraction = options.pop("val_fraction", None)
    val_seed = options.pop("val_seed", None)
    options = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(options) - set(info.options))
    if extra:
        raise ValueError(
            f"dataset {name!r} does not take option(s) {extra}; valid options: "
            f"{', '.join(list(info.options) + list(SHARED_OPTIONS))}"
        )
    splits = info.loader(**options)
    if not isinstance(splits, DatasetSplits):
        raise TypeError(f"dataset {name!r}: the loader returned {type(splits).__name__}, expected DatasetSplits")
    splits.name = name
    _validate(splits, info.layout)
    if unknown_classes is not None and len(unknown_classes) > 0:
        splits = open_set_split(splits, unknown_classes, unknown_from=unknown_from)
    if val_fraction is not None and splits.x_val is None:
        tr, va = validation_split(splits.y_train, val_fraction, 0 if val_seed is None else val_seed)
        tr, va = torch.from_numpy(tr), torch.from_numpy(va)
        splits.x_val, splits.y_val = splits.x_train[va], splits.y_train[va]
        splits.x_train, splits.y_train = splits.x_train[tr], splits.y_train[tr]
        _validate(splits, info.layout)
    splits.preprocessing = {
        **splits.preprocessing,
        "dataset": name,
        "layout": splits.layout,
        "in_shape": list(splits.in_shape),
        "classes": list(splits.classes),
    }
    return splits


def _validate(s: DatasetSplits, layouts: Sequence[str] | None = None) -> None:
    """Check the loader's output against the DatasetSplits contract and the declared layout."""
    k = len(s.classes)
    if k < 2:
        raise ValueError(f"dataset {s.name!r}: need at least 2 classes, got {s.classes}")
    if len(set(s.classes)) != k:
        raise ValueError(f"dataset {s.name!r}: duplicate class names in {s.classes}")
    if (s.x_val is None) != (s.y_val is None):
        raise ValueError(f"dataset {s.name!r}: x_val and y_val must be given together")
    layout = layout_of(s.x_train)
    if layouts is not None and layout not in layouts:
        raise ValueError(
            f"dataset {s.name!r} is registered with layout {' or '.join(layouts)} "
            f"({' or '.join(_shape_text(lay) for lay in layouts)}) but its loader returned x_train of shape "
            f"{tuple(s.x_train.shape)} ({layout})"
        )
    splits = ("train", "test") if s.x_val is None else ("train", "val", "test")
    for split in splits:
        x, y = getattr(s, f"x_{split}"), getattr(s, f"y_{split}")
        if x.dtype != torch.float32 or y.dtype != torch.int64:
            raise TypeError(f"dataset {s.name!r}: x_{split}/y_{split} must be float32/int64, got {x.dtype}/{y.dtype}")
        if x.shape[0] != y.shape[0] or y.dim() != 1:
            raise ValueError(f"dataset {s.name!r}: {x.shape[0]} {split} inputs but labels of shape {tuple(y.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"dataset {s.name!r}: the {split} split is empty")
        if x.shape[1:] != s.x_train.shape[1:]:
            raise ValueError(
                f"dataset {s.name!r}: train inputs {tuple(s.x_train.shape[1:])} and {split} inputs "
                f"{tuple(x.shape[1:])} differ in shape"
            )
        if y.min() < 0 or y.max() >= k:
            raise ValueError(f"dataset {s.name!r}: {split} labels outside 0..{k - 1}")
        if split != "train" and int(torch.unique(y).numel()) < 2:
            # accuracy, t* and every threshold need >= 2 classes: fail now, not after an epoch
            raise ValueError(
                f"dataset {s.name!r}: the {split} split holds only class {s.classes[int(y[0])]!r} "
                f"({len(y)} samples); it needs at least 2 classes (more data, or a larger "
                f"{'val_fraction' if split == 'val' else 'test split'})"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"dataset {s.name!r}: x_{split} contains NaN or Inf")


def _shape_text(layout: str) -> str:
    return {"tabular": "(N, d)", "signal": "(N, C, L)", "image": "(N, C, H, W)"}[layout]


def _resolve_classes(classes: Sequence[str], requested) -> list[int]:
    """Map class names or indices (ints, or digit strings that are not names) to indices."""
    if isinstance(requested, (str, int)):
        requested = [requested]
    index_of = {c: i for i, c in enumerate(classes)}
    out = []
    for item in requested:
        if isinstance(item, str) and item in index_of:
            out.append(index_of[item])
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and 0 <= item < len(classes):
            out.append(int(item))
        elif isinstance(item, str) and item.strip().lstrip("-").isdigit() and 0 <= int(item) < len(classes):
            out.append(int(item))
        else:
            raise ValueError(
                f"unknown_classes: {item!r} is neither a class name nor an index in 0..{len(classes) - 1}; "
                f"classes are {list(classes)}"
            )
    return sorted(set(out))


def open_set_split(splits: DatasetSplits, unknown_classes, unknown_from: str = "test") -> DatasetSplits:
    """Hold out ``unknown_classes`` (SPEC §3.7); see the module docstring for the protocol."""
    if unknown_from not in ("test", "train+test"):
        raise ValueError(f"unknown_from must be 'test' or 'train+test', got {unknown_from!r}")
    if splits.x_unknown is not None:
        raise ValueError("open_set_split: these splits already hold out classes")
    held = _resolve_classes(splits.classes, unknown_classes)
    k = len(splits.classes)
    is_unknown = torch.zeros(k, dtype=torch.bool)
    is_unknown[held] = True
    if k - len(held) < 2:
        raise ValueError(f"unknown_classes: holding out {len(held)} of {k} classes leaves fewer than 2 known classes")
    # old label -> new label (known: rank among known classes; unknown: rank among held-out)
    known_rank = torch.cumsum(~is_unknown, 0) - 1
    unknown_rank = torch.cumsum(is_unknown, 0) - 1
    new_label = torch.where(is_unknown, unknown_rank, known_rank)

    def keep_known(x, y):
        if x is None:
            return None, None
        mask = ~is_unknown[y]
        return x[mask], new_label[y[mask]]

    x_train, y_train = keep_known(splits.x_train, splits.y_train)
    x_val, y_val = keep_known(splits.x_val, splits.y_val)
    x_test, y_test = keep_known(splits.x_test, splits.y_test)
    for split, y in (("train", y_train), ("val", y_val), ("test", y_test)):
        if y is not None and len(y) == 0:
            raise ValueError(
                f"unknown_classes: holding out {[splits.classes[i] for i in held]} leaves the {split} split empty"
            )
    sources = [(splits.x_test, splits.y_test)]
    if unknown_from == "train+test":
        sources.insert(0, (splits.x_train, splits.y_train))
    x_unk = torch.cat([x[is_unknown[y]] for x, y in sources])
    y_unk = torch.cat([new_label[y[is_unknown[y]]] for x, y in sources])
    if len(x_unk) == 0:
        raise ValueError(f"unknown_classes: the held-out classes {[splits.classes[i] for i in held]} have no samples")
    out = DatasetSplits(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        classes=[c for i, c in enumerate(splits.classes) if not is_unknown[i]],
        x_unknown=x_unk,
        y_unknown=y_unk,
        unknown_class_names=[splits.classes[i] for i in held],
        name=splits.name,
        x_val=x_val,
        y_val=y_val,
        preprocessing=dict(splits.preprocessing),
    )
    _validate(out)
    return out


def stratified_split_indices(labels, test_fraction: float, seed: int, *, argument: str = "test_fraction"
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split: (kept_idx, split_off_idx), both sorted int64 arrays.

    Each class c with n_c samples sends round(fraction * n_c) of them to the split-off side,
    but at least one to each side when n_c >= 2 (a singleton class stays on the kept side).
    Vectorised: a seeded permutation, a stable sort by label and each sample's rank within
    its class decide the side. ``argument`` names the fraction in error messages.
    """
    try:
        fraction = float(test_fraction)
    except (TypeError, ValueError):
        fraction = float("nan")
    if isinstance(test_fraction, bool) or not 0.0 < fraction < 1.0:
        raise ValueError(f"{argument} must be in (0, 1), got {test_fraction!r}")
    y = np.asarray(labels).astype(np.int64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"stratified split needs a non-empty 1-D label array, got shape {y.shape}")
    if y.min() < 0:
        raise ValueError("stratified split: labels must be >= 0")
    rng = np.random.default_rng(_split_seed(seed))
    perm = rng.permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]
    counts = np.bincount(y)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - starts[y[order]]
    n_out = np.rint(counts * fraction).astype(np.int64)
    n_out = np.where(counts >= 2, np.clip(n_out, 1, counts - 1), 0)
    is_out = rank < n_out[y]
    return np.flatnonzero(~is_out), np.flatnonzero(is_out)


def _split_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"split seed must be a non-negative int, got {seed!r}")
    return int(seed)


def validation_split(y, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation split of the training labels ``y`` (SPEC §3.9): (train_idx, val_idx).

    Stratified and seeded (``seed`` = the run seed, so every head of one seed sees the same
    split): class c with n_c samples sends round(fraction·n_c) to validation, at least one
    to each side when n_c >= 2, none when n_c = 1. Indices are sorted int64 numpy arrays.
    """
    return stratified_split_indices(y, fraction, seed, argument="val_fraction")


def split_train_test(y, test_fraction: float, seed: int | None, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test split of a source without its own test split, with a clear error
    naming ``source`` when the data are too small to leave a test split of >= 2 classes."""
    y = np.asarray(y)
    n = len(y)
    tr, te = stratified_split_indices(y, test_fraction, 0 if seed is None else seed)
    if len(np.unique(y[te])) < 2:
        counts = np.bincount(y.astype(np.int64)) if n else np.zeros(0, np.int64)
        raise ValueError(
            f"{source}: {n} samples are too few to split off a test set (test_fraction {test_fraction}); "
            f"each class needs at least 2 samples and the test split at least 2 classes "
            f"(samples per class: {counts[counts > 0].tolist()}); give a separate test split or more data"
        )
    return tr, te


def contiguous_labels(*label_arrays: np.ndarray, source: str, names: Sequence[str] | None = None
                      ) -> tuple[list[np.ndarray], list[str]]:
    """Integer labels with gaps -> contiguous ids 0..K-1, the original ids kept as class names.

    With ``names`` (the source's own class list) the labels are returned unchanged. Without,
    the classes are the sorted distinct labels of all arrays together (train, val, test); if
    they are not already 0..K-1 they are remapped (np.searchsorted) and one warning says so.
    """
    if names is not None:
        return [np.asarray(a, dtype=np.int64) for a in label_arrays], [str(c) for c in names]
    present = np.unique(np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in label_arrays]))
    classes = [str(int(c)) for c in present]
    if len(present) and present[-1] == len(present) - 1:  # already 0..K-1
        return [np.asarray(a, dtype=np.int64) for a in label_arrays], classes
    shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    warnings.warn(
        f"{source}: labels {{{shown}}} are not contiguous; remapped to class ids 0..{len(present) - 1} "
        f"(the class names keep the original labels)",
        stacklevel=3,
    )
    return [np.searchsorted(present, np.asarray(a, dtype=np.int64)).astype(np.int64) for a in label_arrays], classes


def resolve_data_file(dataset: str, suffix: str, path=None, data_dir=None):
    """The one file a single-file dataset (``npz``, ``csv``) reads: ``path``, or the only
    ``*<suffix>`` file in ``data_dir``. Errors name the dataset, the directory and the count."""
    from pathlib import Path

    if path is not None and data_dir is not None:
        raise ValueError(f"{dataset}: give either path or data_dir, not both")
    target = path if path is not None else data_dir
    if target is None:
        raise ValueError(f"{dataset}: path (or data_dir) to a {suffix} file is required")
    target = Path(target).expanduser()
    if target.is_dir():
        found = sorted(target.glob(f"*{suffix}"))
        if len(found) != 1:
            raise ValueError(f"{dataset}: directory {target} must hold exactly one {suffix} file, "
                             f"found {len(found)}")
        target = found[0]
    if not target.is_file():
        raise ValueError(f"{dataset}: file {target} does not exist")
    return target
