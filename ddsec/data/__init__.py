"""Datasets for distillation, poisoning and adaptation, loaded into memory and normalised.

Wang et al., "Dataset Distillation" (arXiv 1811.10959) distil MNIST and CIFAR-10, and adapt
between USPS, MNIST and SVHN. ddsec loads these (plus scikit-learn's embedded ``digits``, real
data that needs no files, and any ImageFolder tree) as :class:`ImageDataset` objects: float32
``[N, C, H, W]`` images normalised per channel, int64 ``[N]`` labels.

Example:
    >>> from ddsec.data import load_dataset
    >>> train = load_dataset("digits", train=True)
    >>> train.images.shape, train.num_classes
    (torch.Size([1347, 1, 28, 28]), 10)

Files are never downloaded unless ``download=True``; they are read from the data root
(:func:`data_root`: explicit ``root`` > ``DDSEC_DATA`` > ``~/.cache/ddsec/data``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ddsec.data.dataset import DatasetInfo, ImageDataset
from ddsec.data.cub import CUB_INFO, load_cub
from ddsec.data.digits import DIGITS_INFO, load_digits
from ddsec.data.folder import imagefolder_info, load_imagefolder
from ddsec.data.root import DATA_ENV, data_root
from ddsec.data.torchvision_sets import (
    CIFAR10_INFO,
    MNIST_INFO,
    SVHN_INFO,
    USPS_INFO,
    load_cifar10,
    load_mnist,
    load_svhn,
    load_usps,
    load_usps_pooled,
    usps_framed,
)
from ddsec.data.voc import VOC_INFO, load_voc
from ddsec.errors import DDSecError

__all__ = [
    "DATA_ENV",
    "DatasetInfo",
    "ImageDataset",
    "data_root",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "usps_framed",
]


@dataclass(frozen=True)
class _Entry:
    loader: Callable[..., ImageDataset]
    info: Callable[[str | os.PathLike[str] | None], DatasetInfo]


def _fixed(info: DatasetInfo) -> Callable[[str | os.PathLike[str] | None], DatasetInfo]:
    return lambda root: info


_DATASETS: dict[str, _Entry] = {
    "digits": _Entry(load_digits, _fixed(DIGITS_INFO)),
    "mnist": _Entry(load_mnist, _fixed(MNIST_INFO)),
    "usps": _Entry(load_usps, _fixed(USPS_INFO)),
    "usps-pooled": _Entry(load_usps_pooled, _fixed(USPS_INFO)),
    "svhn": _Entry(load_svhn, _fixed(SVHN_INFO)),
    "cifar10": _Entry(load_cifar10, _fixed(CIFAR10_INFO)),
    "voc": _Entry(load_voc, _fixed(VOC_INFO)),
    "cub": _Entry(load_cub, _fixed(CUB_INFO)),
    "imagefolder": _Entry(load_imagefolder, imagefolder_info),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_DATASETS)


def _entry(name: str) -> _Entry:
    entry = _DATASETS.get(name.lower()) if isinstance(name, str) else None
    if entry is None:
        raise DDSecError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return entry


def dataset_info(name: str, *, root: str | os.PathLike[str] | None = None) -> DatasetInfo:
    """Channels, image size and class count that :func:`load_dataset` gives by default, without loading.

    Args:
        name: A name from :func:`list_datasets` (case-insensitive).
        root: Only for ``imagefolder``: the tree root, to count its classes (folders are listed,
            no image is read). Without it ``num_classes`` is ``None``.

    Returns:
        ``DatasetInfo(channels, image_size, num_classes)``. For ``digits`` the size is the
        default 28 (the native size is 8).

    Raises:
        DDSecError: Unknown name.
    """
    return _entry(name).info(root)


def load_dataset(
    name: str,
    *,
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load one split of a dataset into memory.

    Args:
        name: A name from :func:`list_datasets` (case-insensitive): ``digits``, ``mnist``,
            ``usps``, ``usps-pooled``, ``svhn``, ``cifar10``, ``voc``, ``cub``, ``imagefolder``.
        train: Training split if true, else test split.
        root: Data root for the named datasets (default :func:`data_root`); for
            ``imagefolder``, the tree root (required). Ignored by ``digits``.
        download: Let torchvision fetch missing files (never done otherwise; not available
            for ``voc`` and ``cub``, which must be downloaded by hand).
        image_size: Square side to resize to, default the dataset's own (:func:`dataset_info`).
        channels: 1 or 3, default the dataset's own; grey is repeated to RGB, RGB reduced to luma.

    Returns:
        An :class:`ImageDataset`: images float32 ``[N, C, S, S]`` normalised with the
        training split's per-channel mean/std (adapted to the conversion), labels int64 ``[N]``.

    Raises:
        DDSecError: Unknown name or invalid ``image_size``/``channels``.
        DataNotFoundError: Files missing from the data root (one line saying where and how to fix).
        FormatError: Files present but unreadable.
    """
    return _entry(name).loader(train=train, root=root, download=download, image_size=image_size, channels=channels)
