"""Atomic, resumable checkpoints of a condensation run (safetensors, no pickle).

A checkpoint holds what the loop of :mod:`ddsec.condense.loop` needs to continue exactly where it
stopped: the synthetic images and their momentum, the random generator's state at the start of
the next iteration, the loss history and a fingerprint of the run's settings (resuming with
other settings is refused).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from ddsec._io import atomic_path
from ddsec.errors import FormatError

CHECKPOINT_FORMAT = "ddsec.condense-checkpoint/1"


@dataclass(frozen=True)
class ImageState:
    """The synthetic images being learned and their SGD momentum.

    Attributes:
        images: float ``[N, C, H, W]``, class-major.
        momentum: float ``[N, C, H, W]``, the momentum buffer (zeros before the first step).
    """

    images: Tensor
    momentum: Tensor


@dataclass(frozen=True)
class Checkpoint:
    """A run's state after ``iteration`` completed iterations.

    Attributes:
        state: images and momentum.
        generator_state: uint8 state of the CPU ``torch.Generator`` for the next iteration.
        losses: float32 ``[iteration]`` matching loss per completed iteration.
        fingerprint: JSON-able settings that must match on resume.
    """

    state: ImageState
    generator_state: Tensor
    losses: Tensor
    fingerprint: dict

    @property
    def iteration(self) -> int:
        """Completed iterations."""
        return int(self.losses.shape[0])


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (a crash leaves the previous one intact)."""
    tensors = {
        "images": checkpoint.state.images.detach().cpu().contiguous(),
        "momentum": checkpoint.state.momentum.detach().cpu().contiguous(),
        "generator_state": checkpoint.generator_state.cpu().contiguous(),
        "losses": checkpoint.losses.detach().cpu().float().contiguous(),
    }
    metadata = {"format": CHECKPOINT_FORMAT, "fingerprint": json.dumps(checkpoint.fingerprint, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, images on ``device``.

    Raises:
        FormatError: the file is unreadable, truncated or not a condensation checkpoint.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise FormatError(f"{path} is not a ddsec condensation checkpoint (format {metadata.get('format')!r});"
                              " delete it or pass --force")
        tensors = load_file(str(path))
        return Checkpoint(
            state=ImageState(tensors["images"].to(device), tensors["momentum"].to(device)),
            generator_state=tensors["generator_state"],
            losses=tensors["losses"],
            fingerprint=json.loads(metadata["fingerprint"]),
        )
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "corrupt"
        raise FormatError(f"cannot read checkpoint {path}: {type(exc).__name__}: {reason}; pass --force to start over") from None
