"""Checkpoints of a condensation run, in the outer loop's own checkpoint format.

A condensation run is saved with :func:`ddsec.engine.save_checkpoint` (atomic, safetensors, no
pickle) as a one-step synthetic set with class-major labels: the images ``[1, N, C, H, W]``,
their SGD momentum as the optimizer state ``images.momentum_buffer``, the random generator's
state at the start of the next iteration, the loss history, the run's fingerprint and a time
budget's plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ddsec.engine import LoopState, SyntheticSet, class_major_labels, load_checkpoint, save_checkpoint

_MOMENTUM = "images.momentum_buffer"


@dataclass(frozen=True)
class ImageState:
    """The synthetic images being learned and their SGD momentum.

    Attributes:
        images: float ``[N, C, H, W]``, class-major.
        momentum: float ``[N, C, H, W]``, the momentum buffer (zeros before the first step).
    """

    images: Tensor
    momentum: Tensor


def save_state(path: Path, state: ImageState, generator_state: Tensor, losses: list[float], fingerprint: dict,
               plan: dict) -> None:
    """Checkpoint ``state`` after ``len(losses)`` iterations, atomically, with a time budget's ``plan``."""
    images = state.images.detach().unsqueeze(0)
    labels = class_major_labels(1, images.shape[1], 1)  # layout only; the class of each image is implied
    synthetic = SyntheticSet(images, labels.to(images.device), {"lr": torch.zeros(1, dtype=images.dtype, device=images.device)})
    save_checkpoint(path, LoopState(synthetic, {_MOMENTUM: state.momentum.detach()}, generator_state, len(losses),
                                    torch.tensor(losses, dtype=torch.float32), 1.0, fingerprint, plan))


def load_state(path: Path, device: torch.device | str = "cpu") -> tuple[ImageState, Tensor, list[float], dict, dict]:
    """``(state, generator state, losses, fingerprint, plan)`` from a checkpoint written by :func:`save_state`.

    Raises:
        FormatError: the file is unreadable, truncated or not a checkpoint.
    """
    loop = load_checkpoint(path, device)
    state = ImageState(loop.synthetic.images[0], loop.adam[_MOMENTUM].to(device))
    return state, loop.generator_state, loop.losses.tolist(), loop.fingerprint, loop.plan
