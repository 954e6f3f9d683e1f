"""Inner optimizers as values: pure ``update`` functions over parameter tuples (TorchOpt style).

The unroll, both meta-gradient modes and held-out evaluation take the inner optimizer as a value,
never a hard-coded SGD step. An optimizer reads the step's hyper-parameters from a dict of
scalar tensors (``"lr"`` always; ``"momentum"`` when the set learns one per step), so a learned
hyper-parameter is just a tensor the outer loop differentiates. The back-gradient pass
(:mod:`ddsec.engine.metagrad`) needs nothing else from an optimizer: it takes the adjoint of
``update`` with autograd on the (cheap, elementwise) update alone, and the one Hessian-vector
product per step on the loss gradient, so every optimizer here (SGD with momentum and weight
decay, Adam) has an exact back-gradient pass.

State is a flat tuple of tensors; the empty tuple is the initial state (zero velocity, zero
moments), so ``update`` is defined for ``t = 0`` without an ``init`` call. Conventions follow
``torch.optim`` (weight decay as an L2 term added to the gradient, SGD without dampening, Adam
with bias correction counted from the first inner step), and tests check the unroll against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

Tensors = tuple[Tensor, ...]
Hypers = dict[str, Tensor]
"""One inner step's hyper-parameters: ``"lr"`` and, when learned, ``"momentum"`` (scalar tensors)."""


class InnerOptimizer(Protocol):
    """A pure inner update rule: no state of its own, nothing in place."""

    def update(self, theta: Tensors, state: Tensors, grads: Tensors, hypers: Hypers, t: int) -> tuple[Tensors, Tensors]:
        """``(θ_{t+1}, state_{t+1})`` from ``θ_t``, ``state_t`` (``()`` at the start), the loss
        gradient ``G_t`` (shaped like ``θ``) and step ``t``'s hyper-parameters."""
        ...


def _with_weight_decay(grads: Tensors, theta: Tensors, weight_decay: float) -> Tensors:
    return grads if not weight_decay else tuple(g + weight_decay * p for g, p in zip(grads, theta))


def _sqrt(x: Tensor) -> Tensor:
    """``√x`` whose derivative at 0 is 0 instead of ∞ (a parameter with an exactly zero gradient,
    e.g. behind a dead ReLU, would otherwise give ``∞·0 = NaN`` in the back-gradient pass)."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).sqrt(), 0.0)


def _check(name: str, value: float, low: float, high: float | None = None) -> None:
    if not (value >= low and (high is None or value < high)):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


@dataclass(frozen=True)
class SGD:
    """SGD, optionally with heavy-ball momentum and weight decay (``torch.optim.SGD``, no dampening).

    ``d = G + λθ``; with momentum ``v ← μv + d`` (``v = d`` at the first step) and ``θ ← θ − η v``,
    else ``θ ← θ − η d``. ``μ`` is the step's learned ``hypers["momentum"]`` when the set learns
    one, else ``momentum`` (0: plain SGD, the paper's inner step).

    Attributes:
        momentum: fixed momentum in ``[0, 1)``.
        weight_decay: L2 coefficient ``λ >= 0``.
    """

    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check("momentum", self.momentum, 0.0, 1.0)
        _check("weight_decay", self.weight_decay, 0.0)

    def update(self, theta: Tensors, state: Tensors, grads: Tensors, hypers: Hypers, t: int) -> tuple[Tensors, Tensors]:
        direction = _with_weight_decay(grads, theta, self.weight_decay)
        momentum = hypers.get("momentum", self.momentum or None)
        if momentum is not None:
            direction = direction if not state else tuple(momentum * v + d for v, d in zip(state, direction))
            state = direction
        lr = hypers["lr"]
        return tuple(p - lr * d for p, d in zip(theta, direction)), state


@dataclass(frozen=True)
class Adam:
    """Adam with L2 weight decay (``torch.optim.Adam``), bias correction counted from step 0.

    ``d = G + λθ``, ``m ← β₁m + (1−β₁)d``, ``v ← β₂v + (1−β₂)d²``,
    ``θ ← θ − η (m / (1−β₁^{t+1})) / (√(v / (1−β₂^{t+1})) + ε)``.

    Attributes:
        betas: ``(β₁, β₂)``, each in ``[0, 1)``.
        eps: ``ε > 0``.
        weight_decay: L2 coefficient ``λ >= 0``.
    """

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name, beta in zip(("beta1", "beta2"), self.betas):
            _check(name, beta, 0.0, 1.0)
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        _check("weight_decay", self.weight_decay, 0.0)

    def update(self, theta: Tensors, state: Tensors, grads: Tensors, hypers: Hypers, t: int) -> tuple[Tensors, Tensors]:
        beta1, beta2 = self.betas
        direction = _with_weight_decay(grads, theta, self.weight_decay)
        n = len(theta)
        first, second = (state[:n], state[n:]) if state else ((0.0,) * n, (0.0,) * n)
        m = tuple(beta1 * a + (1 - beta1) * d for a, d in zip(first, direction))
        v = tuple(beta2 * b + (1 - beta2) * d * d for b, d in zip(second, direction))
        lr, c1, c2 = hypers["lr"], 1 - beta1 ** (t + 1), 1 - beta2 ** (t + 1)
        new = tuple(p - lr * (a / c1) / (_sqrt(b / c2) + self.eps) for p, a, b in zip(theta, m, v))
        return new, (*m, *v)
