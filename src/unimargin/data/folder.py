"""Image-folder trees (one sub-directory per class), decoded with Pillow into tensors.

Layout: ``data_dir/<class>/<image>`` (split here with a fixed stratified ``test_fraction``),
or ``data_dir/train/<class>/...`` plus ``data_dir/test/<class>/...`` (used as given; the
classes are those of ``train/``, and every ``test/`` class must be one of them).
Images: .png .jpg .jpeg .bmp .gif .tif .tiff .webp (other files are ignored).

Options:
- ``image_size``: None (all images must already share one size), an int (square) or
  (height, width).
- ``resize``: how to reach ``image_size``: ``"crop"`` (default: scale the shorter side to
  fit, then center-crop; keeps the aspect ratio) or ``"stretch"`` (plain resize).
- ``channels``: 1 (grayscale), 3 (RGB) or None (1 if every image is grayscale, else 3).
- ``test_fraction`` (0.2) and ``seed`` (0) for the split when there is no ``test/``.
Trees too large for memory: :func:`scan_folder` + :class:`ImageFolderDataset` (a torch
Dataset decoding each image on access with the same options).
Output: x (N, C, H, W) float32 = pixel / 255 in [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .registry import DatasetSplits, register_dataset, stratified_split_indices

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("dataset 'folder' needs Pillow: pip install pillow") from exc
    return Image


def scan_folder(root: Path, classes: list[str] | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, labels, classes) of a class-per-sub-directory tree; errors on empty classes."""
    if not root.is_dir():
        raise ValueError(f"folder: directory {root} does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise ValueError(f"folder: {root} has no class sub-directories")
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ValueError(f"folder: {root} has class folders {extra} that are not in the training classes {classes}")
    files, labels = [], []
    for label, name in enumerate(classes):
        class_dir = root / name
        images = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) if class_dir.is_dir() else []
        if not images and name in found:
            raise ValueError(f"folder: class folder {class_dir} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        files += images
        labels += [label] * len(images)
    return files, np.asarray(labels, dtype=np.int64), classes


def _target_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        h, w = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"folder: image_size must be an int or (height, width), got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"folder: image_size must be positive, got {image_size!r}")
    return h, w


def decode_image(path: Path, size: tuple[int, int] | None, resize: str, channels: int):
    """One image as a uint8 array (H, W, C), resized as requested."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if channels == 1 else "RGB")
    except Exception as exc:
        raise ValueError(f"folder: cannot read image {path} ({type(exc).__name__}: {exc})") from exc
    if size is not None and (im.height, im.width) != size:
        h, w = size
        if resize == "stretch":
            im = im.resize((w, h), Image.BILINEAR)
        else:  # scale so the image covers (h, w), then center-crop
            scale = max(h / im.height, w / im.width)
            nh, nw = max(h, round(im.height * scale)), max(w, round(im.width * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            top, left = (nh - h) // 2, (nw - w) // 2
            im = im.crop((left, top, left + w, top + h))
    arr = np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _is_gray(path: Path) -> bool:
    Image = _pil()
    try:
        with Image.open(path) as im:
            return im.mode in ("1", "L", "I", "I;16", "F") or (im.mode == "P" and _palette_gray(im))
    except Exception as exc:
        raise ValueError(f"folder: cannot read image {path} ({type(exc).__name__}: {exc})") from exc


def _palette_gray(im) -> bool:
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _decode_all(files: list[Path], size, resize: str, channels: int) -> torch.Tensor:
    arrays = [decode_image(f, size, resize, channels) for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(f for f, a in zip(files, arrays) if a.shape != first)
        raise ValueError(
            f"folder: images differ in size ({files[0]} is {first[:2]}, {odd} is "
            f"{next(a for a in arrays if a.shape != first).shape[:2]}); pass image_size to resize them"
        )
    stacked = np.stack(arrays)  # (N, H, W, C)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Lazy twin of the folder loader: decodes ``files[i]`` on access -> (x (C,H,W), label)."""

    def __init__(self, files, labels, image_size, resize: str = "crop", channels: int = 3):
        self.files, self.labels = list(files), torch.as_tensor(labels, dtype=torch.int64)
        self.size, self.resize, self.channels = _target_size(image_size), resize, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        arr = decode_image(self.files[i], self.size, self.resize, self.channels)
        return torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(255.0), self.labels[i]


@register_dataset("folder", default_model="cnn", layout="image")
def load_folder(
    data_dir: str | os.PathLike | None = None,
    image_size=None,
    resize: str = "crop",
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int | None = None,
) -> DatasetSplits:
    """Load an image-folder tree into tensors (module docstring for the options)."""
    if data_dir is None:
        raise ValueError("folder: data_dir is required (a directory with one sub-directory per class)")
    if resize not in ("crop", "stretch"):
        raise ValueError(f"folder: resize must be 'crop' or 'stretch', got {resize!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"folder: channels must be 1, 3 or None (auto), got {channels!r}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"folder: data_dir {root} does not exist")
    size = _target_size(image_size)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files, y_train, classes = scan_folder(root / "train")
        test_files, y_test, _ = scan_folder(root / "test", classes)
        if not test_files:
            raise ValueError(f"folder: {root / 'test'} contains no images")
    else:
        files, labels, classes = scan_folder(root)
        tr, te = stratified_split_indices(labels, test_fraction, 0 if seed is None else int(seed))
        train_files, y_train = [files[i] for i in tr], labels[tr]
        test_files, y_test = [files[i] for i in te], labels[te]
    if channels is None:
        channels = 1 if all(_is_gray(f) for f in train_files + test_files) else 3
    x_train = _decode_all(train_files, size, resize, channels)
    x_test = _decode_all(test_files, size, resize, channels)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"folder: train images are {tuple(x_train.shape[2:])} but test images {tuple(x_test.shape[2:])}; pass image_size"
        )
    return DatasetSplits(x_train, torch.from_numpy(y_train), x_test, torch.from_numpy(y_test), classes)
