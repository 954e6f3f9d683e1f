"""The synthetic set being distilled: step batches, labels and the learned settings.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §3: ``S`` distinct steps, each a batch of
``N = classes × ipc`` images with fixed class-major labels, applied for ``E`` epochs, so the inner
loop runs ``T = S·E`` steps, step ``t`` using batch ``t mod S`` and step size
``η_t = softplus(ρ_t) > 0``.

Every learned setting besides the images is one raw tensor in ``SyntheticSet.learned``, read
through its parametrisation (:mod:`ddsec.engine.learned`): the step sizes always; optionally a
momentum per step, ``μ_t = sigmoid(κ_t) ∈ (0, 1)``, for SGD with momentum
(``v_{t+1} = μ_t v_t + g_t``, ``θ_{t+1} = θ_t − η_t v_{t+1}``, ``v_0 = 0``: PyTorch's SGD with
``dampening=0``; ``μ_0`` meets the zero velocity and has no effect), and soft labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ddsec.engine.learned import LABELS, STEP_SIZE, learnable


def inverse_softplus(value: float) -> float:
    """The raw value ``ρ`` with ``softplus(ρ) == value`` (``value > 0``)."""
    if value <= 0:
        raise ValueError(f"a step size must be positive, got {value}")
    return float(STEP_SIZE.raw(torch.tensor(value, dtype=torch.float64)))


def class_major_labels(num_classes: int, ipc: int, steps: int) -> Tensor:
    """Labels ``0,…,0,1,…,1,…`` (each class ``ipc`` times) for every step: int64 ``[S, N]``."""
    per_step = torch.arange(num_classes).repeat_interleave(ipc)
    return per_step.unsqueeze(0).repeat(steps, 1)


@dataclass
class SyntheticSet:
    """Synthetic step batches and their learned settings, stored raw (see :mod:`ddsec.engine.learned`).

    Args:
        images: float ``[S, N, C, H, W]``, in the model's normalised input space.
        labels: int64 ``[S, N]`` class indices, or float ``[S, N, K]`` soft labels.
        learned: raw tensors by setting name: ``"lr"`` ``[T]`` with ``T = S·epochs`` (the step
            sizes are ``softplus(learned["lr"])``), always; ``"momentum"`` ``[T]`` when the inner
            loop is SGD with a learned momentum ``sigmoid(learned["momentum"][t])`` per step;
            ``"labels"`` ``[S, N, K]`` when the labels are learned: the inner steps then use the
            soft targets ``softmax(learned["labels"])`` instead of ``labels`` (which then only
            record the class layout the set started from).
        epochs: how many times the ``S`` step batches are replayed.
    """

    images: Tensor
    labels: Tensor
    learned: dict[str, Tensor]
    epochs: int = 1

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
        if "lr" not in self.learned:
            raise ValueError("a synthetic set always learns its step sizes: learned needs 'lr'")
        for name, raw in self.learned.items():
            if learnable(name).per_step and tuple(raw.shape) != (steps * self.epochs,):
                raise ValueError(f"learned {name!r} must be [T] with T = S·epochs = {steps * self.epochs},"
                                 f" got {tuple(raw.shape)}")
            if not learnable(name).per_step and (raw.dim() != 3 or tuple(raw.shape[:2]) != (steps, per_step)):
                raise ValueError(f"learned {name!r} must be [S={steps}, N={per_step}, K], got {tuple(raw.shape)}")

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
        return cls(images, labels, {"lr": raw}, epochs)

    @classmethod
    def from_values(cls, images: Tensor, labels: Tensor, values: dict[str, Tensor], epochs: int) -> SyntheticSet:
        """A set from its settings' values by name (as exported: positive step sizes ``"lr"``
        ``[T]``, momenta in ``(0, 1)``) instead of raw tensors."""
        for name, value in values.items():
            learnable(name).check(value)
        return cls(images, labels, {name: learnable(name).raw(value) for name, value in values.items()}, epochs)

    @classmethod
    def from_lrs(
        cls, images: Tensor, labels: Tensor, lrs: Tensor, epochs: int, momenta: Tensor | None = None
    ) -> SyntheticSet:
        """A set from positive step sizes ``lrs [T]`` and momenta ``[T]`` in ``(0, 1)`` (as exported)."""
        return cls.from_values(images, labels, {"lr": lrs, **({} if momenta is None else {"momentum": momenta})},
                               epochs)

    @property
    def steps(self) -> int:
        """``S``, the number of distinct step batches."""
        return self.images.shape[0]

    @property
    def total_steps(self) -> int:
        """``T = S·epochs``, the number of inner SGD steps."""
        return self.steps * self.epochs

    def value(self, name: str) -> Tensor | None:
        """The value of learned setting ``name`` (its parametrisation of the raw tensor), ``None``
        when the set does not learn it."""
        raw = self.learned.get(name)
        return None if raw is None else learnable(name).value(raw)

    def lrs(self) -> Tensor:
        """The positive step sizes ``softplus(learned["lr"])``: ``[T]``."""
        return self.value("lr")

    def momenta(self) -> Tensor | None:
        """The inner momenta ``sigmoid(learned["momentum"])``: ``[T]``, or ``None`` for plain SGD."""
        return self.value("momentum")

    def hypers(self) -> dict[str, Tensor]:
        """The learned inner hyper-parameters by the name an inner optimizer reads them
        (:mod:`ddsec.engine.inner`): ``"lr"`` ``[T]`` and, when learned, ``"momentum"`` ``[T]``."""
        return {name: self.value(name) for name in self.learned if learnable(name).per_step}

    def targets(self, s: int) -> Tensor:
        """The inner-loss targets of step batch ``s``: ``labels[s]`` (``[N]`` or ``[N, K]``), or
        ``softmax(learned["labels"][s])`` ``[N, K]`` when the labels are learned."""
        logits = self.learned.get("labels")
        return self.labels[s] if logits is None else LABELS.value(logits[s])

    def batch(self, t: int) -> tuple[Tensor, Tensor]:
        """Images ``[N, C, H, W]`` and targets ``[N]`` (or ``[N, K]``) used at inner step ``t``."""
        s = t % self.steps
        return self.images[s], self.targets(s)

    def replaced(self, images: Tensor | None = None, learned: dict[str, Tensor] | None = None) -> SyntheticSet:
        """The same set with other ``images`` and/or ``learned`` tensors (the rest shared)."""
        return SyntheticSet(self.images if images is None else images, self.labels,
                            self.learned if learned is None else learned, self.epochs)

    def with_images(self, columns: Tensor) -> SyntheticSet:
        """The set of only some images of each step batch: int64 ``columns`` ``[S, n]`` (the same
        count ``n`` in every step), with their labels and per-image learned tensors."""

        def take(tensor: Tensor) -> Tensor:
            return torch.stack([tensor[s, columns[s]] for s in range(self.steps)])

        learned = {name: raw if learnable(name).per_step else take(raw) for name, raw in self.learned.items()}
        return SyntheticSet(take(self.images), take(self.labels), learned, self.epochs)

    def detached(self) -> SyntheticSet:
        """The same set with every tensor detached (constants for evaluation)."""
        return SyntheticSet(self.images.detach(), self.labels.detach(),
                            {name: raw.detach() for name, raw in self.learned.items()}, self.epochs)

    def with_learnable_labels(self, num_classes: int, confidence: float = 0.9) -> SyntheticSet:
        """This set with learned labels initialised so that each image's own class gets
        probability ``confidence`` and the others share the rest (hard labels only)."""
        if self.labels.dim() != 2:
            raise ValueError("learnable labels start from hard labels [S, N]")
        if not 1 / num_classes < confidence < 1:
            raise ValueError(f"confidence must lie in (1/K, 1), got {confidence}")
        gap = math.log(confidence * (num_classes - 1) / (1 - confidence))
        logits = F.one_hot(self.labels, num_classes).to(self.images.dtype) * gap
        return self.replaced(learned={**self.learned, "labels": logits})

    def with_learned(self, name: str, start: float) -> SyntheticSet:
        """This set also learning the per-step setting ``name`` (e.g. ``"momentum"``), every step
        starting at ``start``.

        Raises:
            ValueError: ``name`` is not a per-step setting, or ``start`` is out of its range.
        """
        spec = learnable(name)
        if not spec.per_step:
            raise ValueError(f"{name!r} is not learned per inner step")
        value = torch.full_like(self.learned["lr"], start)
        spec.check(value)
        return self.replaced(learned={**self.learned, name: spec.raw(value)})

    def soft_labels(self) -> Tensor:
        """The labels to export: ``labels``, or the learned soft labels ``[S, N, K]``."""
        logits = self.learned.get("labels")
        return self.labels if logits is None else LABELS.value(logits.detach())
