"""Image-folder trees (one sub-directory per class), decoded with Pillow into tensors.

Layout: ``data_dir/<class>/<image>`` (split here with a fixed stratified ``test_fraction``),
or ``data_dir/train/<class>/...`` plus ``data_dir/test/<class>/...`` (used as given; the
classes are those of ``train/``, and every ``test/`` class must be one of them).
Images: .png .jpg .jpeg .bmp .gif .tif .tiff .webp (other files are ignored).

Options:
- ``image_size``: None (all images must already share one size), an int (square),
  (height, width), or the text "H" / "H,W" (as given on the command line).
- ``resize``: how to reach ``image_size``: ``"crop"`` (default: scale the shorter side to
  fit, then center-crop; keeps the aspect ratio) or ``"stretch"`` (plain resize).
- ``channels``: 1 (grayscale), 3 (RGB) or None (1 if every image is grayscale, else 3).
- ``test_fraction`` (0.2) and ``seed`` (0) for the split when there is no ``test/`` (with
  ``train/`` + ``test/``, setting ``test_fraction`` is an error).
8-bit images are divided by 255, 16-bit images by 65535 (their bit depth; never clipped).
Trees too large for memory: :func:`scan_folder` + :class:`ImageFolderDataset` (a torch
Dataset decoding each image on access with the same options).
Output: x (N, C, H, W) float32 in [0, 1]. ``preprocessing`` records image_size, resize and
channels, so ``predict`` reads new images the same way (:mod:`unimargin.data.inputs`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .registry import DatasetSplits, register_dataset, split_train_test

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


def parse_image_size(image_size, argument: str = "image_size") -> tuple[int, int] | None:
    """None, an int (square), (height, width), or the text "H", "H,W" or "HxW" -> (H, W)."""
    if image_size is None:
        return None
    if isinstance(image_size, str):
        parts = image_size.replace("x", ",").replace("X", ",").split(",")
        image_size = [p.strip() for p in parts]
    elif isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        sizes = [int(s) for s in image_size]
        if any(isinstance(s, bool) or (isinstance(s, float) and not s.is_integer()) for s in image_size):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{argument} must be H or H,W (positive ints), got {image_size!r}") from None
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) <= 0:
        raise ValueError(f"{argument} must be H or H,W (positive ints), got {image_size!r}")
    return sizes[0], sizes[1]


def _bit_depth_image(im, path: Path):
    """(PIL image, scale): an "L"/"RGB" 8-bit image with scale 255, or an "F" image already in [0, 1].

    16-bit grayscale ("I;16*", or "I" for a PNG, whose samples are at most 16 bits) is scaled
    by 65535: ``convert("L")`` would clip every value above 255 to white. Pillow reads 16-bit
    RGB PNGs as 8-bit RGB (the high byte of each sample), which keeps the same [0, 1] scale.
    """
    Image = _pil()
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        arr = np.asarray(im, dtype=np.float32) / np.float32(65535.0)
        return Image.fromarray(arr, "F"), 1.0
    if im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "I" or not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(
                f"folder: image {path} is a {'32-bit integer' if im.mode == 'I' else 'floating-point'} image "
                f"with values outside [0, 1]; save it as 8- or 16-bit"
            )
        return Image.fromarray(arr.astype(np.float32), "F"), 1.0
    return im, 255.0


def decode_image(path: Path, size: tuple[int, int] | None, resize: str, channels: int) -> np.ndarray:
    """One image as a float32 array (H, W, C) in [0, 1], resized as requested.

    8-bit images are divided by 255, 16-bit ones by 65535 (their bit depth, never clipped).
    """
    Image = _pil()
    try:
        with Image.open(path) as im:
            im.load()
            im, scale = _bit_depth_image(im, path)
            if scale != 1.0:
                im = im.convert("L" if channels == 1 else "RGB")
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"folder: cannot read image {path} ({type(exc).__name__}: {exc})") from exc
    if size is not None and (im.height, im.width) != size:
        h, w = size
        if resize == "stretch":
            im = im.resize((w, h), Image.BILINEAR)
        else:  # scale so the image covers (h, w), then center-crop
            factor = max(h / im.height, w / im.width)
            nh, nw = max(h, round(im.height * factor)), max(w, round(im.width * factor))
            im = im.resize((nw, nh), Image.BILINEAR)
            top, left = (nh - h) // 2, (nw - w) // 2
            im = im.crop((left, top, left + w, top + h))
    arr = np.asarray(im, dtype=np.float32)
    if scale != 1.0:
        arr = arr / np.float32(scale)
    else:
        arr = np.clip(arr, 0.0, 1.0)  # bilinear resampling of "F" stays in range up to round-off
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    if arr.shape[2] != channels:  # a 16-bit grayscale image read for a 3-channel model
        arr = np.repeat(arr, channels, axis=2)
    return arr


def _is_gray(path: Path) -> bool:
    Image = _pil()
    try:
        with Image.open(path) as im:
            return im.mode in ("1", "L", "I", "F") or im.mode.startswith("I;16") or (im.mode == "P" and _palette_gray(im))
    except Exception as exc:
        raise ValueError(f"folder: cannot read image {path} ({type(exc).__name__}: {exc})") from exc


def _palette_gray(im) -> bool:
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def decode_images(files: list[Path], size, resize: str, channels: int) -> torch.Tensor:
    """Decode ``files`` into one (N, C, H, W) float32 tensor; an error names two files of different sizes."""
    out = None
    for i, f in enumerate(files):
        arr = decode_image(f, size, resize, channels)
        if out is None:
            out = np.empty((len(files),) + arr.shape, dtype=np.float32)  # one allocation, no stack copy
        elif arr.shape != out.shape[1:]:
            raise ValueError(
                f"folder: images differ in size ({files[0]} is {out.shape[1:3]}, {f} is {arr.shape[:2]}); "
                f"pass image_size to resize them"
            )
        out[i] = arr
    if out is None:
        raise ValueError("folder: no images to decode")
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class ImageFolderDataset(torch.utils.data.Dataset):
    """Lazy twin of the folder loader: decodes ``files[i]`` on access -> (x (C,H,W), label)."""

    def __init__(self, files, labels, image_size, resize: str = "crop", channels: int = 3):
        self.files, self.labels = list(files), torch.as_tensor(labels, dtype=torch.int64)
        self.size, self.resize, self.channels = parse_image_size(image_size), resize, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        arr = decode_image(self.files[i], self.size, self.resize, self.channels)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), self.labels[i]


DEFAULT_TEST_FRACTION = 0.2


@register_dataset("folder", default_model="cnn", layout="image")
def load_folder(
    data_dir: str | os.PathLike | None = None,
    image_size=None,
    resize: str = "crop",
    channels: int | None = None,
    test_fraction: float | None = None,
    seed: int | None = None,
) -> DatasetSplits:
    """An image-folder tree, one sub-directory per class (module docstring for the options)."""
    if data_dir is None:
        raise ValueError("folder: data_dir is required (a directory with one sub-directory per class)")
    if resize not in ("crop", "stretch"):
        raise ValueError(f"folder: resize must be 'crop' or 'stretch', got {resize!r}")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise ValueError(f"folder: channels must be 1, 3 or None (auto), got {channels!r}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"folder: data_dir {root} does not exist")
    size = parse_image_size(image_size)
    if (root / "train").is_dir() and (root / "test").is_dir():
        if test_fraction is not None:
            raise ValueError(f"folder: {root} has train/ and test/ sub-directories; test_fraction applies only without them")
        train_files, y_train, classes = scan_folder(root / "train")
        test_files, y_test, _ = scan_folder(root / "test", classes)
        if not test_files:
            raise ValueError(f"folder: {root / 'test'} contains no images")
    else:
        files, labels, classes = scan_folder(root)
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        tr, te = split_train_test(labels, fraction, seed, f"folder {root}")
        train_files, y_train = [files[i] for i in tr], labels[tr]
        test_files, y_test = [files[i] for i in te], labels[te]
    if channels is None:
        channels = 1 if all(_is_gray(f) for f in train_files + test_files) else 3
    x_train = decode_images(train_files, size, resize, channels)
    x_test = decode_images(test_files, size, resize, channels)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"folder: train images are {tuple(x_train.shape[2:])} but test images {tuple(x_test.shape[2:])}; pass image_size"
        )
    out = DatasetSplits(x_train, torch.from_numpy(y_train), x_test, torch.from_numpy(y_test), classes)
    out.preprocessing = {"image_size": None if size is None else list(size), "resize": resize, "channels": channels}
    return out
