"""The synthetic set being distilled: step batches, fixed labels and learned step sizes.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §3: ``S`` distinct steps, each a batch of
``N = classes × ipc`` images with fixed class-major labels, applied for ``E`` epochs, so the inner
loop runs ``T = S·E`` steps, step ``t`` using batch ``t mod S`` and step size
``η_t = softplus(ρ_t) > 0``.

Optionally the inner loop is SGD with a learned momentum per step, ``μ_t = sigmoid(κ_t) ∈ (0, 1)``:
``v_{t+1} = μ_t v_t + g_t``, ``θ_{t+1} = θ_t − η_t v_{t+1}``, ``v_0 = 0`` (PyTorch's SGD with
``dampening=0``; ``μ_0`` meets the zero velocity and has no effect).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def inverse_softplus(value: float) -> float:
    """The raw value ``ρ`` with ``softplus(ρ) == value`` (``value > 0``)."""
    if value <= 0:
        raise ValueError(f"a step size must be positive, got {value}")
    return value + math.log(-math.expm1(-value))


def logit(value: float) -> float:
    """The raw value ``κ`` with ``sigmoid(κ) == value`` (``0 < value < 1``)."""
    if not 0 < value < 1:
        raise ValueError(f"a momentum must lie in (0, 1), got {value}")
    return math.log(value / (1 - value))


def class_major_labels(num_classes: int, ipc: int, steps: int) -> Tensor:
    """Labels ``0,…,0,1,…,1,…`` (each class ``ipc`` times) for every step: int64 ``[S, N]``."""
    per_step = torch.arange(num_classes).repeat_interleave(ipc)
    return per_step.unsqueeze(0).repeat(steps, 1)


@dataclass
class SyntheticSet:
    """Synthetic step batches and their raw step sizes.

    Args:
        images: float ``[S, N, C, H, W]``, in the model's normalised input space.
        labels: int64 ``[S, N]`` class indices, or float ``[S, N, K]`` soft labels.
        raw_lrs: float ``[T]`` with ``T = S·epochs``; the step sizes are ``softplus(raw_lrs)``.
        epochs: how many times the ``S`` step batches are replayed.
        label_logits: optional float ``[S, N, K]``: learnable labels. When given, the inner steps
            use the soft targets ``softmax(label_logits)`` instead of ``labels`` (which then only
            record the class layout the set started from).
        raw_momenta: optional float ``[T]``: learned inner momentum; the inner loop is then SGD
            with momentum ``sigmoid(raw_momenta[t])`` at step ``t`` instead of plain SGD.
    """

    images: Tensor
    labels: Tensor
    raw_lrs: Tensor
    epochs: int = 1
    label_logits: Tensor | None = None
    raw_momenta: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 5:
            raise ValueError(f"images must be [S, N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        steps, per_step = self.images.shape[:2]
        if tuple(self.labels.shape[:2]) != (steps, per_step) or self.labels.dim() not in (2, 3):
            raise ValueError(
                f"labels must be [S, N] or [S, N, K] matching images [S={steps}, N={per_step}],"
                f" got {tuple(self.labels.shape)}"
            )
        if self.labels.dim() == 2 and self.labels.dtype != torch.int64:
            raise ValueError(f"hard labels must be int64, got {self.labels.dtype}")
        if self.label_logits is not None and (self.label_logits.dim() != 3
                                              or tuple(self.label_logits.shape[:2]) != (steps, per_step)):
            raise ValueError(f"label_logits must be [S={steps}, N={per_step}, K], got {tuple(self.label_logits.shape)}")
        if tuple(self.raw_lrs.shape) != (steps * self.epochs,):
            raise ValueError(
                f"raw_lrs must be [T] with T = S·epochs = {steps * self.epochs},"
                f" got {tuple(self.raw_lrs.shape)}"
            )
        if self.raw_momenta is not None and tuple(self.raw_momenta.shape) != tuple(self.raw_lrs.shape):
            raise ValueError(f"raw_momenta must be [T={steps * self.epochs}], got {tuple(self.raw_momenta.shape)}")

    @classmethod
    def create(
        cls,
        *,
        num_classes: int,
        ipc: int,
        steps: int,
        epochs: int,
        image_shape: tuple[int, int, int],
        init_lr: float,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> SyntheticSet:
        """A fresh set: standard-normal images, class-major labels, every step size ``init_lr``.

        ``generator`` is a CPU generator; the tensors are then moved to ``device``.
        """
        if num_classes < 2 or ipc < 1 or steps < 1:
            raise ValueError(
                f"need num_classes >= 2, ipc >= 1, steps >= 1; got {num_classes}, {ipc}, {steps}"
            )
        shape = (steps, num_classes * ipc, *image_shape)
        images = torch.randn(shape, generator=generator, dtype=dtype).to(device)
        labels = class_major_labels(num_classes, ipc, steps).to(device)
        raw = torch.full((steps * epochs,), inverse_softplus(init_lr), dtype=dtype, device=device)
        return cls(images, labels, raw, epochs)

    @classmethod
    def from_lrs(
        cls, images: Tensor, labels: Tensor, lrs: Tensor, epochs: int, momenta: Tensor | None = None
    ) -> SyntheticSet:
        """A set from positive step sizes ``lrs [T]`` and momenta ``[T]`` in ``(0, 1)`` (as
        exported) instead of raw values."""
        if not bool((lrs > 0).all()):
            raise ValueError("step sizes must be positive")
        if momenta is not None and not bool(((momenta > 0) & (momenta < 1)).all()):
            raise ValueError("momenta must lie in (0, 1)")
        raw = lrs + torch.log(-torch.expm1(-lrs))
        return cls(images, labels, raw, epochs, raw_momenta=None if momenta is None else torch.logit(momenta))

    @property
    def steps(self) -> int:
        """``S``, the number of distinct step batches."""
        return self.images.shape[0]

    @property
    def total_steps(self) -> int:
        """``T = S·epochs``, the number of inner SGD steps."""
        return self.steps * self.epochs

    def lrs(self) -> Tensor:
        """The positive step sizes ``softplus(raw_lrs)``: ``[T]``."""
        return F.softplus(self.raw_lrs)

    def momenta(self) -> Tensor | None:
        """The inner momenta ``sigmoid(raw_momenta)``: ``[T]``, or ``None`` for plain SGD."""
        return None if self.raw_momenta is None else torch.sigmoid(self.raw_momenta)

    def hypers(self) -> dict[str, Tensor]:
        """The learned inner hyper-parameters by the name an inner optimizer reads them
        (:mod:`ddsec.engine.inner`): ``"lr"`` ``[T]`` and, when learned, ``"momentum"`` ``[T]``."""
        momenta = self.momenta()
        return {"lr": self.lrs(), **({} if momenta is None else {"momentum": momenta})}

    def targets(self, s: int) -> Tensor:
        """The inner-loss targets of step batch ``s``: ``labels[s]`` (``[N]`` or ``[N, K]``), or
        ``softmax(label_logits[s])`` ``[N, K]`` when the labels are learned."""
        return self.labels[s] if self.label_logits is None else torch.softmax(self.label_logits[s], dim=-1)

    def batch(self, t: int) -> tuple[Tensor, Tensor]:
        """Images ``[N, C, H, W]`` and targets ``[N]`` (or ``[N, K]``) used at inner step ``t``."""
        s = t % self.steps
        return self.images[s], self.targets(s)

    def detached(self) -> SyntheticSet:
        """The same set with every tensor detached (constants for evaluation)."""
        logits = None if self.label_logits is None else self.label_logits.detach()
        momenta = None if self.raw_momenta is None else self.raw_momenta.detach()
        return SyntheticSet(self.images.detach(), self.labels.detach(), self.raw_lrs.detach(), self.epochs, logits,
                            momenta)

    def with_learnable_labels(self, num_classes: int, confidence: float = 0.9) -> SyntheticSet:
        """This set with ``label_logits`` initialised so that each image's own class gets probability
        ``confidence`` and the others share the rest (hard labels only)."""
        if self.labels.dim() != 2:
            raise ValueError("learnable labels start from hard labels [S, N]")
        if not 1 / num_classes < confidence < 1:
            raise ValueError(f"confidence must lie in (1/K, 1), got {confidence}")
        gap = math.log(confidence * (num_classes - 1) / (1 - confidence))
        logits = F.one_hot(self.labels, num_classes).to(self.images.dtype) * gap
        return SyntheticSet(self.images, self.labels, self.raw_lrs, self.epochs, logits, self.raw_momenta)

    def with_learnable_momentum(self, momentum: float) -> SyntheticSet:
        """This set with a learned inner momentum, every step starting at ``momentum`` in (0, 1)."""
        raw = torch.full_like(self.raw_lrs, logit(momentum))
        return SyntheticSet(self.images, self.labels, self.raw_lrs, self.epochs, self.label_logits, raw)

    def soft_labels(self) -> Tensor:
        """The labels to export: ``labels``, or ``softmax(label_logits)`` ``[S, N, K]`` when learned."""
        return self.labels if self.label_logits is None else torch.softmax(self.label_logits.detach(), dim=-1)
