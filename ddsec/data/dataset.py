"""The in-memory image dataset type shared by all loaders.

Every dataset ddsec works with (digits, MNIST, USPS, SVHN, CIFAR-10, small ImageFolder trees)
fits in memory, so a dataset is just two tensors plus the facts needed to interpret them:
class names and the per-channel mean/std used to normalise the pixels. Distilled images live in
the same normalised space (Wang et al., "Dataset Distillation", arXiv 1811.10959), and
:meth:`ImageDataset.denormalize` maps them back to pixels for display.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["DatasetInfo", "ImageDataset"]


class DatasetInfo(NamedTuple):
    """What :func:`ddsec.data.load_dataset` returns by default, known without loading.

    Attributes:
        channels: Number of image channels (1 grey, 3 RGB).
        image_size: Side length of the square images.
        num_classes: Number of classes, or ``None`` where it depends on files not yet read
            (an ImageFolder tree whose root was not given).
    """

    channels: int
    image_size: int
    num_classes: int | None


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image dataset held in memory, already normalised.

    Attributes:
        name: Registry name of the dataset (e.g. ``"mnist"``).
        images: float32 ``[N, C, H, W]``, normalised per channel as ``(x - mean) / std`` where
            ``x`` are pixels in ``[0, 1]``.
        labels: int64 ``[N]``, values in ``0 .. num_classes - 1``.
        num_classes: Number of classes.
        class_names: ``num_classes`` human-readable class names, index-aligned with labels.
        mean: Per-channel mean (length ``C``) that was subtracted.
        std: Per-channel standard deviation (length ``C``) that was divided by.
    """

    name: str
    images: Tensor
    labels: Tensor
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.float32:
            raise ValueError(
                f"images must be float32 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 [N], got {self.labels.dtype} {tuple(self.labels.shape)}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std must have {channels} entries, got {len(self.mean)} and {len(self.std)}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    def subset(self, index: Tensor) -> ImageDataset:
        """The samples at ``index`` (int64 ``[n]`` or bool ``[N]``), same classes and statistics."""
        return replace(self, images=self.images[index], labels=self.labels[index])

    def denormalize(self, x: Tensor, *, clamp: bool = True) -> Tensor:
        """Map normalised images back to pixels.

        Args:
            x: float ``[..., C, H, W]`` in this dataset's normalised space (real or distilled).
            clamp: Clip the result to ``[0, 1]`` (distilled images may leave the pixel range).

        Returns:
            float ``[..., C, H, W]``: ``x * std + mean``, in ``[0, 1]`` when ``clamp``.
        """
        shape = (len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        pixels = x * std + mean
        return pixels.clamp(0.0, 1.0) if clamp else pixels
