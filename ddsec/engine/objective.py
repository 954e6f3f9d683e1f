"""What a front end gives the outer loop: the ``Objective`` protocol.

Each front end (plain distillation, K→T poisoning, domain adaptation) differs only in how it
samples ``θ0``, where its real batches come from and what targets the outer loss uses on them
(Wang et al., arXiv 1811.10959, §3.3–3.5). It is one object with that behaviour; the outer loop
has no mode switches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsec.engine.distributions import InitDistribution


class Objective(Protocol):
    """The outer objective: a model, ``p(θ0)``, real batches and a loss on them."""

    model: nn.Module
    init: InitDistribution

    def real_batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A real batch: inputs ``[B, C, H, W]`` and the targets the outer loss wants."""
        ...

    def outer_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean loss of ``logits [B, K]`` against ``targets``."""
        ...


class RealBatches:
    """Uniform random batches from an in-memory labelled set.

    Args:
        images: float ``[N, C, H, W]``, normalised.
        labels: int64 ``[N]``.
        batch_size: samples per batch (capped at ``N``).
        device: where batches are put.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, device: torch.device | str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
            raise ValueError(f"need as many labels as images (and at least one), got {images.shape[0]} and {labels.shape[0]}")
        self.images, self.labels = images, labels
        self.batch_size = min(batch_size, images.shape[0])
        self.device = torch.device(device)

    def sample(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(x [B, C, H, W], y [B])`` drawn without replacement, on ``device``."""
        index = torch.randperm(self.images.shape[0], generator=generator)[: self.batch_size]
        return self.images[index].to(self.device), self.labels[index].to(self.device)


class ClassificationObjective:
    """Plain distillation: cross-entropy on real batches (optionally with relabelled targets).

    Args:
        model: the network (in eval mode, no active dropout).
        init: ``p(θ0)``.
        batches: real training batches.
        relabel: maps true labels ``[B]`` to the targets of the outer loss; identity by default.
            The poisoning front end passes ``K → T`` here.
    """

    def __init__(
        self,
        model: nn.Module,
        init: InitDistribution,
        batches: RealBatches,
        relabel: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.model, self.init, self.batches = model, init, batches
        self.relabel = relabel

    def real_batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = self.batches.sample(generator)
        return x, (self.relabel(y) if self.relabel is not None else y)

    def outer_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets)
