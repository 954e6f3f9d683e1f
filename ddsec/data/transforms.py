"""Pixel conversion and normalisation shared by all loaders.

Loaders read pixels (uint8 in ``0..255`` or float in ``[0, 1]``) as ``[N, C, H, W]``, then
:func:`build_dataset` resizes them to the requested square size, converts the channel count,
and normalises per channel. Resizing is bilinear (``antialias=True`` when down-sizing, so
down-sized images do not alias). Grey to RGB repeats the channel; RGB to grey takes the ITU-R
601 luma ``0.299 R + 0.587 G + 0.114 B`` (as ``torchvision.transforms.functional.rgb_to_grayscale``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ddsec.data.dataset import ImageDataset
from ddsec.errors import DDSecError

__all__ = [
    "LUMA",
    "adapt_stats",
    "build_dataset",
    "channel_stats",
    "check_size_and_channels",
    "convert_channels",
    "convert_pixels",
    "normalize",
    "resize",
    "to_unit_float",
]

LUMA = (0.299, 0.587, 0.114)
"""RGB weights of the grey conversion."""

_CHUNK = 4096


def check_size_and_channels(image_size: int | None, channels: int | None) -> None:
    """Reject an unusable ``image_size`` or ``channels`` with a one-line :class:`DDSecError`."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DDSecError(f"image_size must be a positive integer, got {image_size!r}")
    if channels is not None and channels not in (1, 3):
        raise DDSecError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")


def to_unit_float(pixels: Tensor) -> Tensor:
    """Pixels as float32 in ``[0, 1]``.

    Args:
        pixels: uint8 ``[...]`` in ``0..255``, or floating ``[...]`` already in ``[0, 1]``.

    Returns:
        float32 ``[...]`` in ``[0, 1]``.
    """
    if pixels.dtype == torch.uint8:
        return pixels.to(torch.float32).div_(255.0)
    if not pixels.is_floating_point():
        raise TypeError(f"pixels must be uint8 or floating point, got {pixels.dtype}")
    return pixels.to(torch.float32)


def resize(x: Tensor, image_size: int) -> Tensor:
    """Bilinear resize to a square size, anti-aliased when down-sizing.

    Args:
        x: float ``[N, C, H, W]``.
        image_size: Output side length ``S``.

    Returns:
        float ``[N, C, S, S]`` (``x`` itself when already that size).
    """
    h, w = x.shape[-2:]
    if h == image_size and w == image_size:
        return x
    antialias = h > image_size or w > image_size
    out = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=antialias)
    return out.clamp_(0.0, 1.0) if antialias else out


def frame(x: Tensor, image_size: int, box: int) -> Tensor:
    """Resize to ``box × box`` and centre on a zero (background) square of side ``image_size``.

    Args:
        x: float ``[N, C, H, W]`` in ``[0, 1]``, background 0.
        image_size: Output side ``S``.
        box: Side the image is resized to, at most ``S``.

    Returns:
        float ``[N, C, S, S]``.
    """
    before = (image_size - box) // 2
    after = image_size - box - before
    return F.pad(resize(x, box), (before, after, before, after))


def convert_channels(x: Tensor, channels: int) -> Tensor:
    """Convert between grey and RGB.

    Args:
        x: float ``[N, C, H, W]`` with ``C`` in ``{1, 3}``.
        channels: Wanted channel count, 1 or 3.

    Returns:
        float ``[N, channels, H, W]``: grey repeated to RGB, or RGB reduced to luma.
    """
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.repeat(1, 3, 1, 1)
    if c == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    raise DDSecError(f"cannot convert {c}-channel images to {channels} channels")


def convert_pixels(pixels: Tensor, *, image_size: int | None = None, channels: int | None = None) -> Tensor:
    """Pixels to float ``[0, 1]`` at the requested size and channel count (in chunks, to bound memory).

    Args:
        pixels: uint8 ``[N, C, H, W]`` in ``0..255`` or float ``[N, C, H, W]`` in ``[0, 1]``.
        image_size: Output side ``S``, or ``None`` to keep ``H, W``.
        channels: Output channels (1 or 3), or ``None`` to keep ``C``.

    Returns:
        float32 ``[N, channels, S, S]`` in ``[0, 1]``.
    """
    if pixels.dim() != 4:
        raise ValueError(f"pixels must be [N, C, H, W], got shape {tuple(pixels.shape)}")
    check_size_and_channels(image_size, channels)
    n, c, h, w = pixels.shape
    out_c = c if channels is None else channels
    out_h, out_w = (h, w) if image_size is None else (image_size, image_size)
    out = torch.empty((n, out_c, out_h, out_w), dtype=torch.float32)
    for start in range(0, n, _CHUNK):
        chunk = to_unit_float(pixels[start : start + _CHUNK])
        if image_size is not None:
            chunk = resize(chunk, image_size)
        out[start : start + _CHUNK] = convert_channels(chunk, out_c)
    return out


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation, rounded to 4 decimals.

    Args:
        x: float ``[N, C, H, W]`` pixels in ``[0, 1]``.

    Returns:
        ``(mean, std)``, each a tuple of ``C`` floats. A constant channel gets std 1.0, so that
        normalising never divides by zero.
    """
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, correction=0)
    means = tuple(round(float(m), 4) for m in mean)
    stds = tuple(round(float(s), 4) if float(s) > 1e-4 else 1.0 for s in std)
    return means, stds


def adapt_stats(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Carry per-channel statistics through a channel conversion.

    Grey to RGB repeats the grey values (exact). RGB to grey gives the luma-weighted mean
    (exact) and the luma-weighted std (exact for perfectly correlated channels, an upper bound
    otherwise; close for natural images, whose channels are strongly correlated).

    Args:
        mean: Per-channel means (length 1 or 3).
        std: Per-channel stds (same length).
        channels: Target channel count, 1 or 3.

    Returns:
        ``(mean, std)`` of length ``channels``.
    """
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) == channels:
        return mean, std
    if len(mean) == 1 and channels == 3:
        return mean * 3, std * 3
    if len(mean) == 3 and channels == 1:
        return (
            (round(sum(w * m for w, m in zip(LUMA, mean)), 4),),
            (round(sum(w * s for w, s in zip(LUMA, std)), 4),),
        )
    raise DDSecError(f"cannot adapt {len(mean)}-channel statistics to {channels} channels")


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel, in place on ``x``.

    Args:
        x: float ``[N, C, H, W]`` in ``[0, 1]`` (overwritten).
        mean: ``C`` floats.
        std: ``C`` floats.

    Returns:
        ``x``, normalised.
    """
    shape = (1, len(mean), 1, 1)
    x.sub_(torch.tensor(mean, dtype=x.dtype).view(shape))
    return x.div_(torch.tensor(std, dtype=x.dtype).view(shape))


def build_dataset(
    name: str,
    pixels: Tensor,
    labels: Tensor,
    *,
    class_names: Sequence[str],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Convert, normalise and wrap pixels as an :class:`ImageDataset`.

    Args:
        name: Registry name of the dataset.
        pixels: uint8 ``[N, C, H, W]`` or float ``[N, C, H, W]`` in ``[0, 1]``.
        labels: integer ``[N]``.
        class_names: One name per class.
        mean: Per-channel pixel mean of the training split, for ``C`` channels (adapted to
            ``channels`` here), or ``None`` to compute it from ``pixels`` after conversion.
        std: As ``mean``; ``None`` together with ``mean``.
        image_size: Output side, or ``None`` for the native size.
        channels: Output channels, or ``None`` for the native count.

    Returns:
        The dataset, images float32 ``[N, channels, S, S]``, labels int64 ``[N]``.
    """
    x = convert_pixels(pixels, image_size=image_size, channels=channels)
    if mean is None or std is None:
        mean, std = channel_stats(x)
    else:
        mean, std = adapt_stats(mean, std, x.shape[1])
    return ImageDataset(
        name=name,
        images=normalize(x, mean, std),
        labels=torch.as_tensor(labels).to(torch.int64).reshape(-1),
        num_classes=len(class_names),
        class_names=tuple(class_names),
        mean=tuple(mean),
        std=tuple(std),
    )
