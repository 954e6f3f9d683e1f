"""The learned settings of a synthetic set besides its images: one :class:`Learnable` each.

A setting is stored raw (unconstrained: what the outer Adam updates) and read through its
parametrisation: the step sizes ``η = softplus(ρ)`` ``[T]``, the inner momenta
``μ = sigmoid(κ)`` ``[T]`` (Wang et al., arXiv 1811.10959, §3 and its momentum variant) and the
labels ``softmax(logits)`` ``[S, N, K]``. :class:`~ddsec.engine.synthetic.SyntheticSet` holds them
in one dict by name; the outer loop, both meta-gradient modes, checkpoints and the export iterate
over it, so a new learnable inner hyper-parameter is one entry in :data:`LEARNABLES` plus the
inner optimizer that reads it by name (:mod:`ddsec.engine.inner`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _inverse_softplus(value: Tensor) -> Tensor:
    return value + torch.log(-torch.expm1(-value))


def _check_positive(value: Tensor) -> None:
    if not bool((value > 0).all()):
        raise ValueError("step sizes must be positive")


def _check_fraction(value: Tensor) -> None:
    if not bool(((value > 0) & (value < 1)).all()):
        raise ValueError("momenta must lie in (0, 1)")


def _check_distribution(value: Tensor) -> None:
    if not bool(((value > 0) & (value <= 1)).all()):
        raise ValueError("soft labels must be positive probabilities")


@dataclass(frozen=True)
class Learnable:
    """One learnable setting.

    Attributes:
        name: its key in ``SyntheticSet.learned`` and, for an inner hyper-parameter, in the step's
            ``hypers`` an inner optimizer reads.
        key: its name in checkpoints and in the outer Adam's state (kept from the first format).
        value: raw tensor → the setting's value, differentiable.
        raw: the inverse of ``value`` (for a set built from exported values).
        check: raises ``ValueError`` when a value is out of the setting's range.
        per_step: ``True``: one scalar per inner step, shape ``[T]``, an inner hyper-parameter;
            ``False``: per synthetic image, ``[S, N, K]`` (the labels, read by the inner loss).
        rate_from: whose Adam learning rate the setting takes when it is not given its own
            (``"images"`` or another setting's name).
    """

    name: str
    key: str
    value: Callable[[Tensor], Tensor]
    raw: Callable[[Tensor], Tensor]
    check: Callable[[Tensor], None]
    per_step: bool
    rate_from: str


STEP_SIZE = Learnable("lr", "raw_lrs", F.softplus, _inverse_softplus, _check_positive, True, "images")
MOMENTUM = Learnable("momentum", "raw_momenta", torch.sigmoid, torch.logit, _check_fraction, True, "lr")
LABELS = Learnable("labels", "label_logits", lambda logits: torch.softmax(logits, dim=-1), torch.log,
                   _check_distribution, False, "images")

LEARNABLES: dict[str, Learnable] = {spec.name: spec for spec in (STEP_SIZE, MOMENTUM, LABELS)}
"""Every learnable setting by name, in the order the outer loop's Adam groups take them."""


def learnable(name: str) -> Learnable:
    """The setting called ``name``.

    Raises:
        ValueError: no such setting.
    """
    if name not in LEARNABLES:
        raise ValueError(f"unknown learned setting {name!r}; known: {', '.join(LEARNABLES)}")
    return LEARNABLES[name]


def adam_rates(images_rate: float, given: dict[str, float | None], names: list[str]) -> dict[str, float]:
    """The outer Adam rate of the images (``"images"``) and of each learned setting in ``names``: its
    own from ``given`` where set, else the rate of its ``rate_from``, followed until one is set."""
    rates = {"images": images_rate}

    def rate(name: str) -> float:
        if name == "images":
            return images_rate
        own = given.get(name)
        return own if own is not None else rate(learnable(name).rate_from)

    rates |= {name: rate(name) for name in names}
    return rates
