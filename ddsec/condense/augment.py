"""Differentiable Siamese Augmentation (DSA).

Zhao and Bilen, "Dataset Condensation with Differentiable Siamese Augmentation" (arXiv
2102.08259): while condensing, the real and the synthetic batch are transformed by the *same*
random augmentation, and the transformation is differentiable so the matching loss reaches the
synthetic pixels through it. Each call applies one operation picked at random from the
strategy (the paper's single-transformation mode):

- ``color``: brightness ``x + (u − ½)·1.0``, saturation ``(x − x̄_c)·2u + x̄_c`` (channel mean),
  contrast ``(x − x̄)·(u + ½) + x̄`` (image mean), with fresh ``u ~ U[0, 1)`` for each;
- ``crop``: translation by up to 1/8 of the side, zero padding;
- ``cutout``: zero a square of half the side at a random centre;
- ``flip``: horizontal flip with probability ½;
- ``scale``: independent x/y scale factors in ``[1/1.2, 1.2]``;
- ``rotate``: rotation by up to ±15°.

Geometric operations are one vectorised ``affine_grid``/``grid_sample`` over the batch. With
``siamese=True`` one parameter draw is shared by every image of the batch, so two batches
augmented under the same seed get identical transformations whatever their sizes; with
``siamese=False`` every image gets its own draw (used when training evaluation models).
Digit datasets leave out ``flip`` (a mirrored digit is another shape).

Evaluation models may instead train with DC's own MNIST augmentation (:func:`dc_augment`, named
``dc``): the same three geometric operations at DC's larger magnitudes, one chosen per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ddsec.errors import DDSecError

OPERATIONS = ("color", "crop", "cutout", "flip", "scale", "rotate")
"""Every DSA operation, in the order of the paper's full strategy."""
DIGIT_DATASETS = ("digits", "mnist", "usps", "usps-pooled", "svhn")
"""Datasets whose default strategy has no ``flip``."""

BRIGHTNESS, SATURATION, CONTRAST = 1.0, 2.0, 0.5
CROP_RATIO, CUTOUT_RATIO, SCALE_RATIO, ROTATE_DEGREES, FLIP_PROBABILITY = 0.125, 0.5, 1.2, 15.0, 0.5

DC_AUGMENTATION = "dc"
"""Evaluation-augmentation name of :func:`dc_augment`."""
DC_CROP_PIXELS, DC_SCALE, DC_ROTATE_DEGREES = 4, 0.2, 45.0

Augment = Callable[[Tensor, torch.Generator], Tensor]
"""``augment(images [B, C, H, W], generator) -> images [B, C, H, W]``, random draws from ``generator``."""


def parse_strategy(strategy: str, option: str = "--dsa-strategy", alternatives: str = "or none") -> tuple[str, ...]:
    """``"color_crop_flip"`` → ``("color", "crop", "flip")``; ``"none"`` → ``()``.

    ``option`` names the setting in the error message, ``alternatives`` the other values it takes.

    Raises:
        DDSecError: an unknown operation.
    """
    if strategy in ("", "none"):
        return ()
    ops = tuple(strategy.split("_"))
    unknown = [op for op in ops if op not in OPERATIONS]
    if unknown:
        raise DDSecError(f"unknown DSA operation {unknown[0]!r} in {option}; use names from"
                         f" {'_'.join(OPERATIONS)} joined by '_', {alternatives}")
    return ops


def default_strategy(dataset: str) -> str:
    """The paper's strategy for ``dataset``: all six operations, without ``flip`` for digits."""
    ops = [op for op in OPERATIONS if not (op == "flip" and dataset.lower() in DIGIT_DATASETS)]
    return "_".join(ops)


def _uniform(generator: torch.Generator, n: int, like: Tensor) -> Tensor:
    """``n`` draws of ``U[0, 1)`` from the CPU ``generator``, as ``like``'s dtype and device."""
    return torch.rand(n, generator=generator).to(dtype=like.dtype, device=like.device)


def _warp(images: Tensor, theta: Tensor) -> Tensor:
    """Resample ``images [B, C, H, W]`` with affine maps ``theta [B, 2, 3]`` (zero padding)."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _theta(a: Tensor, b: Tensor, c: Tensor, d: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Affine maps ``[B, 2, 3]``, ``[[a, b, tx], [c, d, ty]]``, from ``[B]`` tensors."""
    return torch.stack([torch.stack([a, b, tx], -1), torch.stack([c, d, ty], -1)], -2)


def _affine(images: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """``_warp`` with ``theta = [[a, b, tx], [c, d, ty]]`` built from ``[B]`` tensors."""
    return _warp(images, _theta(a, b, c, d, tx, ty))


def _color(x: Tensor, u: Callable[[], Tensor]) -> Tensor:
    x = x + (u() - 0.5).view(-1, 1, 1, 1) * BRIGHTNESS
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * (u() * SATURATION).view(-1, 1, 1, 1) + channel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * (u() + CONTRAST).view(-1, 1, 1, 1) + image_mean


def _crop(x: Tensor, u: Callable[[], Tensor]) -> Tensor:
    height, width = x.shape[-2:]
    pad_x, pad_y = int(width * CROP_RATIO + 0.5), int(height * CROP_RATIO + 0.5)
    shift_x = torch.floor(u() * (2 * pad_x + 1)) - pad_x  # whole pixels in [-pad, pad]
    shift_y = torch.floor(u() * (2 * pad_y + 1)) - pad_y
    one, zero = torch.ones_like(shift_x), torch.zeros_like(shift_x)
    return _affine(x, one, zero, zero, one, 2 * shift_x / width, 2 * shift_y / height)


def _cutout(x: Tensor, u: Callable[[], Tensor]) -> Tensor:
    height, width = x.shape[-2:]
    half_x, half_y = int(width * CUTOUT_RATIO + 0.5) / 2, int(height * CUTOUT_RATIO + 0.5) / 2
    centre_x, centre_y = torch.floor(u() * width), torch.floor(u() * height)
    cols = torch.arange(width, device=x.device, dtype=x.dtype)
    rows = torch.arange(height, device=x.device, dtype=x.dtype)
    inside_x = (cols.view(1, -1) - centre_x.view(-1, 1)).abs() < half_x  # [B, W]
    inside_y = (rows.view(1, -1) - centre_y.view(-1, 1)).abs() < half_y  # [B, H]
    keep = ~(inside_y.unsqueeze(2) & inside_x.unsqueeze(1))  # [B, H, W]
    return x * keep.unsqueeze(1).to(x.dtype)


def _flip(x: Tensor, u: Callable[[], Tensor]) -> Tensor:
    flip = (u() < FLIP_PROBABILITY).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def _scale(x: Tensor, u: Callable[[], Tensor]) -> Tensor:
    low, span = 1.0 / SCALE_RATIO, SCALE_RATIO - 1.0 / SCALE_RATIO
    sx, sy = u() * span + low, u() * span + low
    zero = torch.zeros_like(sx)
    return _affine(x, sx, zero, zero, sy, zero, zero)


def _rotate(x: Tensor, u: Callable[[], Tensor]) -> Tensor:
    angle = (u() - 0.5) * 2 * math.radians(ROTATE_DEGREES)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    return _affine(x, cos, sin, -sin, cos, zero, zero)


_OPS: dict[str, Callable[[Tensor, Callable[[], Tensor]], Tensor]] = {
    "color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate,
}


def dsa(images: Tensor, strategy: tuple[str, ...], seed: int, *, siamese: bool = True) -> Tensor:
    """Apply one random DSA operation of ``strategy`` to ``images``, all draws from ``seed``.

    Two calls with the same ``seed`` and ``siamese=True`` transform their batches identically
    (the draws do not depend on the batch size). Differentiable with respect to ``images``.

    Args:
        images: float ``[B, C, H, W]``, any device.
        strategy: operation names from :data:`OPERATIONS` (see :func:`parse_strategy`);
            empty: no augmentation.
        seed: seed of a fresh CPU generator driving every draw.
        siamese: one parameter draw for the whole batch (``True``) or one per image.

    Returns:
        float ``[B, C, H, W]``.
    """
    if not strategy:
        return images
    generator = torch.Generator().manual_seed(seed)
    op = strategy[int(torch.randint(len(strategy), (1,), generator=generator))]
    batch = images.shape[0]

    def u() -> Tensor:
        draw = _uniform(generator, 1 if siamese else batch, images)
        return draw.expand(batch) if siamese else draw

    return _OPS[op](images, u)


def random_seed(generator: torch.Generator) -> int:
    """A seed for :func:`dsa`, drawn from ``generator``."""
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


def dsa_augment(strategy: tuple[str, ...]) -> Augment | None:
    """Per-image (non-Siamese) DSA as an :data:`Augment` for training evaluation models; ``None`` if empty."""
    if not strategy:
        return None
    return lambda images, generator: dsa(images, strategy, random_seed(generator), siamese=False)


def dc_augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """DC's evaluation augmentation on MNIST (Zhao et al., arXiv 2006.05929; ``crop_scale_rotate``).

    Each image gets one operation chosen for it: a shift by whole pixels, up to
    :data:`DC_CROP_PIXELS` in x and in y; a magnification of width and height by independent
    factors in ``[1 − DC_SCALE, 1 + DC_SCALE]``; or a rotation by up to ±:data:`DC_ROTATE_DEGREES`.
    Zero padding (the normalised mean). DC's published MNIST figures were measured with these
    magnitudes; DSA's ``crop_scale_rotate`` is milder (±15°).

    Args:
        images: float ``[B, C, H, W]``, any device.
        generator: CPU generator behind every draw.

    Returns:
        float ``[B, C, H, W]``.
    """
    batch, (height, width) = images.shape[0], images.shape[-2:]

    def u() -> Tensor:
        return _uniform(generator, batch, images)

    one, zero = torch.ones_like(u()), torch.zeros_like(u())
    shift_x, shift_y = (torch.floor(u() * (2 * DC_CROP_PIXELS + 1)) - DC_CROP_PIXELS for _ in range(2))
    crop = _theta(one, zero, zero, one, 2 * shift_x / width, 2 * shift_y / height)
    zoom_x, zoom_y = (1 + (2 * u() - 1) * DC_SCALE for _ in range(2))
    scale = _theta(1 / zoom_x, zero, zero, 1 / zoom_y, zero, zero)
    angle = (u() - 0.5) * 2 * math.radians(DC_ROTATE_DEGREES)
    rotate = _theta(torch.cos(angle), torch.sin(angle), -torch.sin(angle), torch.cos(angle), zero, zero)
    choice = torch.randint(3, (batch,), generator=generator).to(images.device)
    theta = torch.stack([crop, scale, rotate])[choice, torch.arange(batch, device=images.device)]
    return _warp(images, theta)


def evaluation_augment(name: str, option: str = "--eval-augment") -> Augment | None:
    """The augmentation evaluation models train with: ``dc`` (:func:`dc_augment`), or a DSA strategy
    with per-image draws (:func:`dsa_augment`); ``None`` for ``none``.

    Raises:
        DDSecError: neither (the message names ``option``).
    """
    if name == DC_AUGMENTATION:
        return dc_augment
    return dsa_augment(parse_strategy(name, option, f"none, or {DC_AUGMENTATION} (DC's MNIST crop/scale/rotate)"))
