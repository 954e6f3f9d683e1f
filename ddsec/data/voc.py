"""PASCAL VOC 2007 as 20-class classification of object crops, in ImageNet's normalised space.

Wang et al., "Dataset Distillation" (arXiv 1811.10959) adapt an ImageNet-pretrained AlexNet to
PASCAL-VOC and CUB-200 with a few distilled images; this module provides the VOC side (and the
image reader shared with :mod:`ddsec.data.cub`).

Files are read from :func:`ddsec.data.root.data_root` in the official layout, which both
archives unpack to::

    <root>/VOCdevkit/VOC2007/Annotations/<id>.xml
    <root>/VOCdevkit/VOC2007/JPEGImages/<id>.jpg
    <root>/VOCdevkit/VOC2007/ImageSets/Main/trainval.txt   (train=True, 5,011 images)
    <root>/VOCdevkit/VOC2007/ImageSets/Main/test.txt       (train=False, 4,952 images)

Every ``<object>`` of a listed image whose ``<difficult>`` is not ``1`` is one sample: the crop
of its ``<bndbox>`` (1-based, inclusive ``xmin ymin xmax ymax``, clamped to the image), resized
to a square (bilinear, anti-aliased when down-sizing, aspect ratio not kept), labelled with the
index of ``<name>`` in :data:`VOC_CLASSES`. Pixels are normalised with the ImageNet statistics
the AlexNet was trained with, not with statistics of VOC.

Memory: everything is held in memory as float32. The trainval split has 12,608 non-difficult
objects (Table 1 of the VOC2007 devkit), so at the default 224 px it needs about 7.6 GB
(12,608 x 3 x 224 x 224 x 4 bytes); the test split (12,032 objects) about 7.2 GB. A smaller
``image_size`` shrinks this quadratically (64 px: about 0.6 GB).

ddsec cannot download VOC (torchvision's copy is not usable here): the archives must be fetched
and extracted by hand, as the :class:`~ddsec.errors.DataNotFoundError` message says.
"""

from __future__ import annotations

import os
from functools import partial
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ddsec.data.dataset import DatasetInfo, ImageDataset
from ddsec.data.root import data_root
from ddsec.data.transforms import adapt_stats, check_size_and_channels, convert_pixels, normalize
from ddsec.errors import DataNotFoundError, FormatError

__all__ = [
    "IMAGENET_STATS",
    "VOC_CLASSES",
    "VOC_INFO",
    "VOC_TEST_URL",
    "VOC_TRAINVAL_URL",
    "Box",
    "Sample",
    "load_voc",
    "read_image_samples",
    "read_voc_objects",
]

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""Per-channel RGB ``(mean, std)`` of ImageNet, in ``[0, 1]`` units."""

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
"""The 20 VOC class names, sorted; a label is an index into this tuple."""

VOC_INFO = DatasetInfo(channels=3, image_size=224, num_classes=len(VOC_CLASSES))

VOC_TRAINVAL_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar"
VOC_TEST_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar"

Box = tuple[int, int, int, int]
"""``(left, upper, right, lower)`` pixel box, 0-based, right and lower exclusive."""

Sample = tuple[Path, Box | None, int]
"""``(image file, box to crop or None for the whole image, label)``."""


def _not_found(base: Path, path: Path) -> DataNotFoundError:
    return DataNotFoundError(
        f"PASCAL VOC 2007 not found: {path} does not exist; download {VOC_TRAINVAL_URL} and {VOC_TEST_URL} "
        f"and extract both in {base} (they unpack to {base / 'VOCdevkit' / 'VOC2007'}), or point --data-dir "
        "or DDSEC_DATA at the folder holding VOCdevkit; there is no --download for VOC "
        "(torchvision's copy is not usable here)"
    )


def _decode(path: Path, missing: Callable[[Path], DataNotFoundError]) -> torch.Tensor:
    """One image file as uint8 RGB ``[3, H, W]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.array(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise missing(path) from exc
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise FormatError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(array).permute(2, 0, 1)


def _crop(image: torch.Tensor, box: Box, path: Path) -> torch.Tensor:
    """The part of uint8 ``[3, H, W]`` inside ``box`` clamped to the image, ``[3, h, w]``."""
    height, width = image.shape[1:]
    left, upper = min(max(box[0], 0), width), min(max(box[1], 0), height)
    right, lower = min(max(box[2], 0), width), min(max(box[3], 0), height)
    if right <= left or lower <= upper:
        raise FormatError(f"box {box} lies outside the {width}x{height} image {path}")
    return image[:, upper:lower, left:right]


def read_image_samples(
    name: str,
    samples: Sequence[Sample],
    *,
    class_names: Sequence[str],
    image_size: int,
    channels: int | None,
    missing: Callable[[Path], DataNotFoundError],
) -> ImageDataset:
    """Decode images (or boxes of them) and normalise them with :data:`IMAGENET_STATS`.

    Each file is decoded once per run of consecutive samples that name it, and each sample is
    resized on its own into one preallocated tensor, so peak memory is about the result's size.

    Args:
        name: Registry name of the dataset.
        samples: ``(path, box, label)`` per sample (see :data:`Sample`).
        class_names: One name per class.
        image_size: Output side ``S``.
        channels: 3 (``None``) or 1 (luma; the statistics are adapted).
        missing: Builds the error for an image file that does not exist.

    Returns:
        images float32 ``[N, channels, S, S]``, labels int64 ``[N]``.

    Raises:
        DataNotFoundError: An image file is missing (from ``missing``).
        FormatError: An image cannot be decoded, or a box lies outside its image.
    """
    out_channels = 3 if channels is None else channels
    x = torch.empty((len(samples), out_channels, image_size, image_size), dtype=torch.float32)
    current, image = None, torch.empty(0)
    for i, (path, box, _) in enumerate(samples):
        if path != current:
            current, image = path, _decode(path, missing)
        crop = image if box is None else _crop(image, box, path)
        x[i] = convert_pixels(crop.unsqueeze(0), image_size=image_size, channels=out_channels)[0]
    mean, std = adapt_stats(*IMAGENET_STATS, out_channels)
    return ImageDataset(
        name=name,
        images=normalize(x, mean, std),
        labels=torch.tensor([label for _, _, label in samples], dtype=torch.int64),
        num_classes=len(class_names),
        class_names=tuple(class_names),
        mean=mean,
        std=std,
    )


def _field(obj: ET.Element, tag: str, path: Path) -> str:
    text = obj.findtext(tag)
    if text is None or not text.strip():
        raise FormatError(f"{path}: an <object> has no <{tag}>")
    return text.strip()


def read_voc_objects(path: str | os.PathLike[str]) -> list[tuple[Box, int]]:
    """The non-difficult objects of one VOC annotation file.

    Args:
        path: An ``Annotations/<id>.xml`` file.

    Returns:
        ``(box, label)`` per ``<object>`` whose ``<difficult>`` is not ``1``, in file order:
        ``box`` as a :data:`Box` (not yet clamped to the image), ``label`` an index into
        :data:`VOC_CLASSES`.

    Raises:
        FormatError: The file is not well-formed XML, an object lacks its name or box, a
            coordinate is not a number, a box is inverted, or a class name is unknown.
    """
    path = Path(path)
    try:
        objects = ET.parse(path).getroot().findall("object")
    except (ET.ParseError, OSError) as exc:
        raise FormatError(f"{path} is not a readable VOC annotation: {exc}") from exc
    found = []
    for obj in objects:
        if (obj.findtext("difficult") or "").strip() == "1":
            continue
        name = _field(obj, "name", path)
        if name not in VOC_CLASSES:
            raise FormatError(f"{path}: unknown VOC class {name!r}; expected one of the 20 VOC2007 classes")
        corners = [_field(obj, f"bndbox/{k}", path) for k in ("xmin", "ymin", "xmax", "ymax")]
        try:
            xmin, ymin, xmax, ymax = (round(float(c)) for c in corners)
        except (ValueError, OverflowError) as exc:
            raise FormatError(f"{path}: a <bndbox> coordinate is not a number ({exc})") from exc
        if xmax < xmin or ymax < ymin:
            raise FormatError(f"{path}: inverted <bndbox> {xmin},{ymin},{xmax},{ymax} for {name!r}")
        found.append(((xmin - 1, ymin - 1, xmax, ymax), VOC_CLASSES.index(name)))
    return found


def load_voc(
    *,
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load the non-difficult object crops of VOC2007 trainval or test (see the module docstring).

    Args:
        train: The ``trainval`` split if true, else ``test``.
        root: Data root (the folder holding ``VOCdevkit/``), default :func:`data_root`.
        download: Ignored: VOC must be downloaded by hand (the error message says how).
        image_size: Side length, default 224.
        channels: 3 (default) or 1.

    Returns:
        images float32 ``[N, channels, S, S]`` normalised with the ImageNet mean/std, labels
        int64 ``[N]`` in 0..19, class names :data:`VOC_CLASSES`.

    Raises:
        DataNotFoundError: The VOC folder, split list, an annotation or an image is missing.
        FormatError: An annotation or image cannot be read (the message names the file).
    """
    del download
    check_size_and_channels(image_size, channels)
    base = data_root(root)
    folder = base / "VOCdevkit" / "VOC2007"
    missing = partial(_not_found, base)
    split_file = folder / "ImageSets" / "Main" / ("trainval.txt" if train else "test.txt")
    for path in (folder, split_file):
        if not path.exists():
            raise missing(path)
    try:
        ids = split_file.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"cannot read the VOC image list {split_file}: {exc}") from exc
    if not ids:
        raise FormatError(f"the VOC image list {split_file} is empty")
    samples: list[Sample] = []
    for image_id in ids:
        annotation = folder / "Annotations" / f"{image_id}.xml"
        if not annotation.is_file():
            raise missing(annotation)
        jpeg = folder / "JPEGImages" / f"{image_id}.jpg"
        samples += [(jpeg, box, label) for box, label in read_voc_objects(annotation)]
    size = VOC_INFO.image_size if image_size is None else image_size
    return read_image_samples(
        "voc", samples, class_names=VOC_CLASSES, image_size=size, channels=channels, missing=missing
    )
