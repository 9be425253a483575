"""Dataset registry, the :class:`DatasetSplits` container and the open-set split.

Every source module registers a loader with :func:`register_dataset`; a loader takes keyword
options and returns a :class:`DatasetSplits` holding CPU tensors (``x`` float32 with a
channel dimension, ``y`` int64 labels indexing ``classes``). :func:`load_dataset` adds the
options every dataset shares (``unknown_classes``, ``unknown_from``) and validates what the
loader returned, so a broken source fails loudly instead of training on garbage.

Open-set protocol (SPEC §3.7): the held-out classes are removed from both the train and the
test split, the remaining (known) classes are re-indexed ``0..K'-1`` in their original
order, and the test samples of the held-out classes become ``x_unknown`` / ``y_unknown``
(``y_unknown`` indexes ``unknown_class_names``). With ``unknown_from="train+test"`` the
held-out classes' training samples are added to the unknown set as well (they are still
never part of ``x_train``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "DatasetSplits",
    "register_dataset",
    "list_datasets",
    "load_dataset",
    "open_set_split",
    "stratified_split_indices",
]

_LOADERS: dict[str, Callable[..., "DatasetSplits"]] = {}


@dataclass
class DatasetSplits:
    """Train/test tensors of one dataset (DESIGN.md "Data", contract.md).

    ``x_*``: float32 tensors ``(N, C, ...)``; ``y_*``: int64 tensors ``(N,)`` indexing
    ``classes``. ``x_unknown`` / ``y_unknown`` are ``None`` unless classes were held out;
    ``y_unknown`` indexes ``unknown_class_names``.
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

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, ``x_train.shape[1:]``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of (known) classes, ``len(classes)``."""
        return len(self.classes)

    def __repr__(self) -> str:  # tensors would flood the terminal
        unknown = "" if self.x_unknown is None else f", unknown={len(self.x_unknown)} ({self.unknown_class_names})"
        return (
            f"DatasetSplits(name={self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, classes={self.num_classes}{unknown})"
        )


def register_dataset(name: str):
    """Decorator registering ``loader(**options) -> DatasetSplits`` under ``name``."""

    def decorator(loader):
        if name in _LOADERS:
            raise ValueError(f"dataset {name!r} is already registered")
        _LOADERS[name] = loader
        return loader

    return decorator


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_LOADERS)


def load_dataset(name: str, **options) -> DatasetSplits:
    """Load dataset ``name`` as tensors.

    Options shared by every dataset: ``unknown_classes`` (class names or indices to hold
    out, see module docstring), ``unknown_from`` (``"test"`` default, or
    ``"train+test"``). The other options are the loader's own (``data_dir``,
    ``cache_dir``, ``seed``, ...; see docs/data.md). Options passed as ``None`` mean "the
    default", so callers can forward unset settings unconditionally.
    """
    if not isinstance(name, str) or name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(list_datasets())}")
    unknown_classes = options.pop("unknown_classes", None)
    unknown_from = options.pop("unknown_from", None) or "test"
    options = {k: v for k, v in options.items() if v is not None}
    loader = _LOADERS[name]
    accepted = [p for p in inspect.signature(loader).parameters if not p.startswith("_")]
    extra = sorted(set(options) - set(accepted))
    if extra:
        raise ValueError(
            f"dataset {name!r} does not take option(s) {extra}; valid options: "
            f"{', '.join(accepted + ['unknown_classes', 'unknown_from'])}"
        )
    splits = loader(**options)
    splits.name = name
    _validate(splits)
    if unknown_classes is not None and len(unknown_classes) > 0:
        splits = open_set_split(splits, unknown_classes, unknown_from=unknown_from)
    return splits


def _validate(s: DatasetSplits) -> None:
    """Check the loader's output against the DatasetSplits contract."""
    k = len(s.classes)
    if k < 2:
        raise ValueError(f"dataset {s.name!r}: need at least 2 classes, got {s.classes}")
    if len(set(s.classes)) != k:
        raise ValueError(f"dataset {s.name!r}: duplicate class names in {s.classes}")
    for split in ("train", "test"):
        x, y = getattr(s, f"x_{split}"), getattr(s, f"y_{split}")
        if x.dtype != torch.float32 or y.dtype != torch.int64:
            raise TypeError(f"dataset {s.name!r}: x_{split}/y_{split} must be float32/int64, got {x.dtype}/{y.dtype}")
        if x.shape[0] != y.shape[0] or y.dim() != 1:
            raise ValueError(f"dataset {s.name!r}: {x.shape[0]} {split} inputs but labels of shape {tuple(y.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"dataset {s.name!r}: the {split} split is empty")
        if y.min() < 0 or y.max() >= k:
            raise ValueError(f"dataset {s.name!r}: {split} labels outside 0..{k - 1}")
        if not torch.isfinite(x).all():
            raise ValueError(f"dataset {s.name!r}: x_{split} contains NaN or Inf")
    if s.x_train.shape[1:] != s.x_test.shape[1:]:
        raise ValueError(
            f"dataset {s.name!r}: train inputs {tuple(s.x_train.shape[1:])} and test inputs "
            f"{tuple(s.x_test.shape[1:])} differ in shape"
        )


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
        mask = ~is_unknown[y]
        return x[mask], new_label[y[mask]]

    x_train, y_train = keep_known(splits.x_train, splits.y_train)
    x_test, y_test = keep_known(splits.x_test, splits.y_test)
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) == 0:
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
    )
    _validate(out)
    return out


def stratified_split_indices(labels, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split: (train_idx, test_idx), both sorted.

    Each class c with n_c samples sends round(test_fraction * n_c) of them to test, but at
    least one to each side when n_c >= 2. Vectorised: a seeded permutation, a stable sort
    by label and each sample's rank within its class decide the side.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    y = np.asarray(labels).astype(np.int64)
    if y.size == 0:
        raise ValueError("stratified split of an empty label array")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]
    counts = np.bincount(y)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - starts[y[order]]
    n_test = np.rint(counts * float(test_fraction)).astype(np.int64)
    n_test = np.where(counts >= 2, np.clip(n_test, 1, counts - 1), 0)
    is_test = rank < n_test[y]
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
