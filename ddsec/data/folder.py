"""Any torchvision ``ImageFolder`` tree, loaded into memory as one RGB dataset.

Layout: ``PATH/train/<class>/<image>`` and ``PATH/test/<class>/<image>`` (``PATH/val`` is used
when there is no ``PATH/test``). When ``PATH/train`` does not exist, the whole tree
``PATH/<class>/<image>`` is used for *both* splits, so "test" accuracy is then measured on the
training images. Class indices follow the sorted class-folder names of the train split (as
``torchvision.datasets.ImageFolder`` assigns them), and the test split is read with the same
mapping even if some classes are missing from it. Images are decoded with Pillow, converted to
RGB and resized to a square (bilinear, anti-aliased when down-sizing; aspect ratio is not kept).
Normalisation statistics are computed from the train split at the requested size and channels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ddsec.data.dataset import DatasetInfo, ImageDataset
from ddsec.data.transforms import build_dataset, channel_stats, check_size_and_channels, convert_pixels
from ddsec.errors import DataNotFoundError, DDSecError, FormatError

__all__ = ["IMAGEFOLDER_INFO", "imagefolder_info", "load_imagefolder", "split_folders"]

IMAGEFOLDER_INFO = DatasetInfo(channels=3, image_size=32, num_classes=None)

_TEST_NAMES = ("test", "val")


def split_folders(root: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """The train and test folders of a tree.

    Args:
        root: The tree root.

    Returns:
        ``(train_dir, test_dir)``: ``root/train`` and ``root/test`` (or ``root/val``, or ``None``
        when neither exists) if ``root/train`` exists, else ``(root, root)``.
    """
    root = Path(root).expanduser()
    train_dir = root / "train"
    if train_dir.is_dir():
        test_dir = next((root / n for n in _TEST_NAMES if (root / n).is_dir()), None)
        return train_dir, test_dir
    return root, root


def _classes(train_dir: Path) -> list[str]:
    from torchvision.datasets.folder import find_classes

    if not train_dir.is_dir():
        raise DataNotFoundError(f"image folder {train_dir} does not exist; pass the tree root with --data-dir")
    try:
        classes, _ = find_classes(train_dir)
    except FileNotFoundError as exc:
        raise DataNotFoundError(
            f"no class folders in {train_dir}; expected {train_dir}/<class>/<image> (e.g. .png, .jpg)"
        ) from exc
    return classes


def imagefolder_info(root: str | os.PathLike[str] | None = None) -> DatasetInfo:
    """Default channels and size, and the class count when ``root`` is given (lists folders only)."""
    if root is None:
        return IMAGEFOLDER_INFO
    return IMAGEFOLDER_INFO._replace(num_classes=len(_classes(split_folders(root)[0])))


def _read_split(
    folder: Path, class_to_idx: dict[str, int], size: int, *, allow_empty: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a split: float32 ``[N, 3, size, size]`` pixels in ``[0, 1]`` and int64 ``[N]`` labels."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    try:
        samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=allow_empty)
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"{folder}: {exc}") from exc
    if not samples:
        raise DataNotFoundError(f"no images in {folder}; expected {folder}/<class>/<image> (e.g. .png, .jpg)")
    pixels = torch.empty((len(samples), 3, size, size), dtype=torch.float32)
    for i, (path, _) in enumerate(samples):
        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise FormatError(f"cannot read image {path}: {exc}") from exc
        chw = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)
        pixels[i] = convert_pixels(chw, image_size=size)[0]
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return pixels, labels


def load_imagefolder(
    *,
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load an ImageFolder tree (see the module docstring for the layout).

    Loading the test split also decodes the train split, for its normalisation statistics.

    Args:
        train: Read the train folder (or the whole tree) or the test folder.
        root: The tree root (required; not a data root).
        download: Ignored (there is nothing to download).
        image_size: Side length, default 32.
        channels: 3 (default) or 1.

    Returns:
        images float32 ``[N, channels, S, S]``, labels int64 ``[N]``, class names from the
        train split's folder names.

    Raises:
        DDSecError: ``root`` is missing.
        DataNotFoundError: The folders or images are missing.
        FormatError: An image cannot be decoded.
    """
    del download
    check_size_and_channels(image_size, channels)
    if root is None:
        raise DDSecError("the imagefolder dataset needs the tree root: pass root=PATH (--data-dir PATH)")
    size = IMAGEFOLDER_INFO.image_size if image_size is None else image_size
    train_dir, test_dir = split_folders(root)
    classes = _classes(train_dir)
    class_to_idx = {name: i for i, name in enumerate(classes)}
    train_pixels, train_labels = _read_split(train_dir, class_to_idx, size, allow_empty=False)
    mean, std = channel_stats(convert_pixels(train_pixels, channels=channels))
    if train or test_dir == train_dir:
        pixels, labels = train_pixels, train_labels
    else:
        if test_dir is None:
            raise DataNotFoundError(
                f"no test split in {Path(root).expanduser()}: expected a 'test' or 'val' folder next to 'train'"
            )
        extra = sorted(set(_classes(test_dir)) - set(classes))
        if extra:
            raise DDSecError(f"{test_dir} has classes not in {train_dir}: {', '.join(extra)}")
        pixels, labels = _read_split(test_dir, class_to_idx, size, allow_empty=True)
    return build_dataset(
        "imagefolder",
        pixels,
        labels,
        class_names=tuple(classes),
        mean=mean,
        std=std,
        channels=channels,
    )
