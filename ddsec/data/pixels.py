"""Deliverable images: valid pixels, 8-bit levels, an L∞ ball around real images, lossless PNGs.

A poisoning batch is only a threat if it can be handed to a victim as images. Images live in the
model's normalised space ``x = (p − mean) / std``; a :class:`PixelConstraint` keeps the pixels
``p`` in ``[0, 1]`` (and within ``ε`` of an anchor real image, for clean-label batches) by
projection after every update, and delivers them — optionally rounded to 8-bit levels — to the
inner loop: the meta-gradient is taken at the delivered images and applied to the continuous
ones (a straight-through estimator). What is evaluated and exported is exactly the delivered
tensor, and 8-bit batches are also written as PNG files that load back to it bit for bit.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ddsec._io import atomic_path
from ddsec.errors import DDSecError, FormatError

LEVELS = 255


def _stats(values: tuple[float, ...], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(len(values), 1, 1)


def to_pixels(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Pixel values ``x·std + mean`` of normalised images ``[..., C, H, W]``."""
    return x * _stats(std, x) + _stats(mean, x)


def from_levels(levels: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Normalised float32 images from 8-bit levels (integers 0 … 255, any dtype) ``[..., C, H, W]``.

    The one formula both the delivered batch and its PNG files go through, so they are equal bit
    for bit.
    """
    pixels = levels.to(torch.float32) / LEVELS
    return (pixels - _stats(mean, pixels)) / _stats(std, pixels)


@dataclass(frozen=True)
class PixelConstraint:
    """Valid pixels (and optionally 8-bit levels and an L∞ ball) for a synthetic batch.

    Attributes:
        mean, std: the dataset's normalisation (one entry per channel).
        quantize: deliver 8-bit levels (crafting sees the rounding).
        epsilon: L∞ radius in pixel units around ``anchors`` (``None``: no ball).
        anchors: normalised real images ``[S, N, C, H, W]``, each of its slot's own class.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    quantize: bool = False
    epsilon: float | None = None
    anchors: Tensor | None = None

    def __post_init__(self) -> None:
        if self.epsilon is not None and not 0 < self.epsilon < 1:
            raise DDSecError(f"--epsilon must lie in (0, 1) pixel units (e.g. 8/255), got {self.epsilon}")
        if (self.epsilon is None) != (self.anchors is None):
            raise ValueError("epsilon and anchors go together")

    def _bounds(self, pixels: Tensor) -> tuple[Tensor | float, Tensor | float]:
        if self.anchors is None:
            return 0.0, 1.0
        anchors = to_pixels(self.anchors.to(pixels), self.mean, self.std)
        return (anchors - self.epsilon).clamp(min=0.0), (anchors + self.epsilon).clamp(max=1.0)

    @torch.no_grad()
    def project_(self, x: Tensor) -> None:
        """Move normalised images ``x`` ``[S, N, C, H, W]`` into the allowed set, in place."""
        pixels = to_pixels(x, self.mean, self.std)
        low, high = self._bounds(pixels)
        pixels = torch.maximum(torch.minimum(pixels, torch.as_tensor(high).to(pixels)), torch.as_tensor(low).to(pixels))
        x.copy_((pixels - _stats(self.mean, x)) / _stats(self.std, x))

    @torch.no_grad()
    def deliver(self, x: Tensor) -> Tensor:
        """The images a victim receives: ``x`` projected, rounded to 8-bit levels when ``quantize``."""
        x = x.detach().clone()
        self.project_(x)
        if not self.quantize:
            return x
        levels = torch.round(to_pixels(x, self.mean, self.std).clamp(0.0, 1.0) * LEVELS)
        if self.anchors is not None:  # rounding must not leave the ε-ball: step back inside it
            low, high = self._bounds(levels / LEVELS)
            levels = torch.minimum(torch.maximum(levels, torch.ceil(torch.as_tensor(low) * LEVELS - 1e-6)),
                                   torch.floor(torch.as_tensor(high) * LEVELS + 1e-6))
        return from_levels(levels, self.mean, self.std).to(x.dtype)


def pixel_report(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                 anchors: Tensor | None = None) -> dict[str, float]:
    """Pixel range of normalised images: min, max, the fraction outside ``[0, 1]``, whether every
    value is an 8-bit level and, with ``anchors``, the largest L∞ distance to them (pixel units)."""
    pixels = to_pixels(images.detach().double(), mean, std)
    levels = pixels * LEVELS
    report = {"pixel_min": float(pixels.min()), "pixel_max": float(pixels.max()),
              "outside_fraction": float(((pixels < -1e-6) | (pixels > 1 + 1e-6)).double().mean()),
              "8bit": bool(((levels - levels.round()).abs() < 1e-3).all())}
    if anchors is not None:
        report["max_perturbation"] = float((pixels - to_pixels(anchors.double(), mean, std)).abs().max())
    return report


def save_pngs(folder: str | Path, images: Tensor, labels: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Path:
    """Write 8-bit images ``[S, N, C, H, W]`` (normalised) as lossless PNGs plus ``labels.csv``.

    Files are ``step<s>-<i>.png`` (grey for 1 channel, RGB for 3); the CSV has ``file,step,index,label``
    (hard labels ``[S, N]`` only).

    Raises:
        DDSecError: the images are not 8-bit levels (craft with ``--quantize 8bit``) or labels are soft.
    """
    if labels.ndim != 2:
        raise DDSecError("PNG export needs hard labels; soft (learned) labels only live in the safetensors file")
    levels = torch.round(to_pixels(images.detach().float(), mean, std) * LEVELS)
    if not torch.equal(from_levels(levels, mean, std), images.detach().float()):
        raise DDSecError("the batch is not made of 8-bit pixels; craft it with --quantize 8bit to export PNGs")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [("file", "step", "index", "label")]
    for s in range(images.shape[0]):
        for i in range(images.shape[1]):
            name = f"step{s}-{i:03d}.png"
            array = levels[s, i].to(torch.uint8).permute(1, 2, 0).numpy()
            with atomic_path(folder / name) as tmp:
                Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(tmp, format="PNG")
            rows.append((name, str(s), str(i), str(int(labels[s, i]))))
    with atomic_path(folder / "labels.csv") as tmp, open(tmp, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return folder


def load_pngs(folder: str | Path, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """The batch written by :func:`save_pngs`: normalised images ``[S, N, C, H, W]`` and labels ``[S, N]``.

    Raises:
        FormatError: ``labels.csv`` or a listed PNG is missing or unreadable.
    """
    folder = Path(folder)
    try:
        with open(folder / "labels.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        steps, per_step = 1 + max(int(r["step"]) for r in rows), 1 + max(int(r["index"]) for r in rows)
        levels, labels = None, torch.zeros(steps, per_step, dtype=torch.int64)
        for row in rows:
            array = np.asarray(Image.open(folder / row["file"]))
            image = torch.from_numpy(array.copy()).reshape(*array.shape[:2], -1).permute(2, 0, 1)
            if levels is None:
                levels = torch.zeros(steps, per_step, *image.shape, dtype=torch.uint8)
            levels[int(row["step"]), int(row["index"])] = image
            labels[int(row["step"]), int(row["index"])] = int(row["label"])
    except (OSError, KeyError, ValueError) as exc:
        raise FormatError(f"cannot read the PNG batch in {folder}: {exc}") from None
    return from_levels(levels, mean, std), labels
