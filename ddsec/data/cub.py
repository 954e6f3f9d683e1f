"""CUB-200-2011 birds, 200 classes, official train/test split, in ImageNet's normalised space.

Wang et al., "Dataset Distillation" (arXiv 1811.10959) adapt an ImageNet-pretrained AlexNet to
PASCAL-VOC and CUB-200 with a few distilled images; this module provides the CUB side.

Files are read from :func:`ddsec.data.root.data_root` in the layout ``CUB_200_2011.tgz``
unpacks to::

    <root>/CUB_200_2011/images.txt               <image id> <class dir>/<file>.jpg
    <root>/CUB_200_2011/image_class_labels.txt   <image id> <class id, 1-based>
    <root>/CUB_200_2011/train_test_split.txt     <image id> <1 = train, 0 = test>
    <root>/CUB_200_2011/classes.txt              <class id> <class name, e.g. 001.Black_footed_Albatross>
    <root>/CUB_200_2011/images/<class dir>/<file>.jpg

Whole images (no bounding-box crop) in ``images.txt`` order, converted to RGB and resized to a
square (bilinear, anti-aliased when down-sizing, aspect ratio not kept), normalised with the
ImageNet statistics. In memory as float32 at the default 224 px, the 5,994 training images
need about 3.6 GB and the 5,794 test images about 3.5 GB; a smaller ``image_size`` shrinks this
quadratically.

ddsec cannot download CUB (torchvision has no loader for it): the archive must be fetched and
extracted by hand, as the :class:`~ddsec.errors.DataNotFoundError` message says.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from ddsec.data.dataset import DatasetInfo, ImageDataset
from ddsec.data.root import data_root
from ddsec.data.transforms import check_size_and_channels
from ddsec.data.voc import Sample, read_image_samples
from ddsec.errors import DataNotFoundError, FormatError

__all__ = ["CUB_INFO", "CUB_URL", "load_cub", "read_cub_table"]

CUB_INFO = DatasetInfo(channels=3, image_size=224, num_classes=200)

CUB_URL = "https://data.caltech.edu/records/65de6-vfk28"


def _not_found(base: Path, path: Path) -> DataNotFoundError:
    return DataNotFoundError(
        f"CUB-200-2011 not found: {path} does not exist; download CUB_200_2011.tgz from {CUB_URL} and "
        f"extract it in {base} (it unpacks to {base / 'CUB_200_2011'}), or point --data-dir or DDSEC_DATA "
        "at the folder holding CUB_200_2011; there is no --download for CUB (torchvision has no CUB loader)"
    )


def read_cub_table(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read one of CUB's ``<id> <value>`` text files.

    Args:
        path: ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt`` or ``classes.txt``.

    Returns:
        ``{id: value}`` in file order (blank lines skipped).

    Raises:
        FormatError: The file cannot be read, or a line is not ``<integer id> <value>``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"cannot read {path}: {exc}") from exc
    table = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split(maxsplit=1)
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdecimal():
            raise FormatError(f"{path} line {number}: expected '<id> <value>', got {line!r}")
        table[int(fields[0])] = fields[1].strip()
    return table


def _entry(table: dict[int, str], image_id: int, path: Path, allowed: range) -> int:
    """The integer value of ``image_id`` in ``table`` (read from ``path``), checked to lie in ``allowed``."""
    value = table.get(image_id, "")
    if not value.isdecimal() or int(value) not in allowed:
        raise FormatError(
            f"{path}: image {image_id} needs a value in {allowed.start}..{allowed.stop - 1}, got {value or 'none'!r}"
        )
    return int(value)


def load_cub(
    *,
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load one split of CUB-200-2011 (see the module docstring).

    Args:
        train: The official training images (5,994) if true, else the test images (5,794).
        root: Data root (the folder holding ``CUB_200_2011/``), default :func:`data_root`.
        download: Ignored: CUB must be downloaded by hand (the error message says how).
        image_size: Side length, default 224.
        channels: 3 (default) or 1.

    Returns:
        images float32 ``[N, channels, S, S]`` normalised with the ImageNet mean/std, labels
        int64 ``[N]`` (class id - 1), class names from ``classes.txt`` in id order.

    Raises:
        DataNotFoundError: The CUB folder, one of its text files or an image is missing.
        FormatError: A text file is malformed or inconsistent, or an image cannot be decoded.
    """
    del download
    check_size_and_channels(image_size, channels)
    base = data_root(root)
    folder = base / "CUB_200_2011"
    missing = partial(_not_found, base)
    names = ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt")
    for path in (folder, *(folder / n for n in names)):
        if not path.exists():
            raise missing(path)
    classes, images, labels, split = (read_cub_table(folder / n) for n in names)
    class_ids = range(1, len(classes) + 1)
    if sorted(classes) != list(class_ids):
        raise FormatError(f"{folder / 'classes.txt'}: class ids must be 1..{len(classes)}")
    samples: list[Sample] = []
    for image_id, relative in images.items():
        if _entry(split, image_id, folder / "train_test_split.txt", range(2)) == int(train):
            label = _entry(labels, image_id, folder / "image_class_labels.txt", class_ids) - 1
            samples.append((folder / "images" / relative, None, label))
    size = CUB_INFO.image_size if image_size is None else image_size
    class_names = tuple(classes[i] for i in class_ids)
    return read_image_samples(
        "cub", samples, class_names=class_names, image_size=size, channels=channels, missing=missing
    )
