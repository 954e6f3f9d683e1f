"""What each inner step trains on: the step plan of an unroll.

By default the ``T`` inner steps replay the synthetic set as distilled (Wang et al., arXiv
1811.10959): step ``t`` trains on step batch ``t mod S`` alone with the learned step size ``η_t``.
A victim that does not play along (MetaPoison, Huang et al., NeurIPS 2020: poisons inside clean
mini-batches, several steps) needs more: clean images mixed into a step's batch, random shifts,
clean steps without the synthetic images, a scaled or fixed step size. An :class:`InnerStep`
says all of that for one step; the unroll and both meta-gradient modes walk a list of them, so
crafting and evaluation under a victim share one definition. All randomness (which clean
images, which shifts) is drawn when the plan is made, so the back-gradient pass replays the
forward exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def shift_images(images: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """Each image moved by its own offset, the uncovered border zero; differentiable in ``images``.

    Args:
        images: float ``[N, C, H, W]``.
        offsets: int64 ``[N, 2]`` ``(dy, dx)`` in ``[0, 2·pad]`` (``pad`` is no move).
        pad: the largest shift in pixels.
    """
    height, width = images.shape[-2:]
    padded = F.pad(images, (pad,) * 4)
    return torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets.tolist())])


@dataclass(frozen=True)
class InnerStep:
    """One inner step.

    Attributes:
        slot: the synthetic step batch trained on (``None``: clean images only).
        lr_index: which learned step size (and learned momentum) this step uses; ``None`` uses
            the fixed ``lr``.
        lr_scale: multiplies the learned step size.
        lr: the fixed step size (with ``lr_index=None``).
        clean_images: float ``[B, C, H, W]`` clean images in the step's batch, after the
            synthetic ones (the loss is the mean over the union).
        clean_labels: int64 ``[B]``.
        offsets: int64 ``[N + B, 2]`` random shifts of the whole batch (see :func:`shift_images`).
        pad: the largest shift.
    """

    slot: int | None
    lr_index: int | None = None
    lr_scale: float = 1.0
    lr: float | None = None
    clean_images: Tensor | None = None
    clean_labels: Tensor | None = None
    offsets: Tensor | None = None
    pad: int = 0

    def __post_init__(self) -> None:
        if (self.lr_index is None) == (self.lr is None):
            raise ValueError("an inner step has either a learned step size (lr_index) or a fixed lr")
        if self.slot is None and self.clean_images is None:
            raise ValueError("an inner step needs synthetic images (slot), clean images, or both")
        if (self.clean_images is None) != (self.clean_labels is None):
            raise ValueError("clean_images and clean_labels go together")

    def batch(self, images: Tensor | None, targets: Tensor | None) -> tuple[Tensor, Tensor]:
        """The step's training batch from its synthetic images ``[N, C, H, W]`` and targets (``[N]``
        or soft ``[N, K]``; both ``None`` for a clean step): clean images appended, then shifted."""
        if self.clean_images is not None:
            clean_targets = self.clean_labels
            if targets is not None and targets.ndim == 2:
                clean_targets = F.one_hot(clean_targets, targets.shape[-1]).to(targets.dtype)
            images = self.clean_images if images is None else torch.cat([images, self.clean_images])
            targets = clean_targets if targets is None else torch.cat([targets, clean_targets])
        if self.offsets is not None:
            images = shift_images(images, self.offsets, self.pad)
        return images, targets

    def hypers(self, learned: dict[str, Tensor]) -> dict[str, Tensor]:
        """The step's hyper-parameters from the set's learned ones (``[T]`` tensors by name)."""
        if self.lr_index is None:
            return {"lr": torch.tensor(self.lr, dtype=learned["lr"].dtype, device=learned["lr"].device)}
        return {k: (v[self.lr_index] * self.lr_scale if k == "lr" else v[self.lr_index]) for k, v in learned.items()}


def replay(steps: int, total: int) -> list[InnerStep]:
    """The default plan: step ``t`` trains on step batch ``t mod steps`` alone, learned step size ``t``."""
    return [InnerStep(t % steps, lr_index=t) for t in range(total)]
