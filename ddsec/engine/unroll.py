"""The inner loop: out-of-place steps of an inner optimizer on the synthetic step batches.

``θ_{t+1} = θ_t − η_t ∇_θ ℓ(f(x̃_{t mod S}; θ_t), ỹ_{t mod S})`` (Wang et al., arXiv 1811.10959,
eq. 2) with the default :class:`~ddsec.engine.inner.SGD`, for a whole population of models at
once; any :class:`~ddsec.engine.inner.InnerOptimizer` (momentum, weight decay, Adam) replaces
the plain step. Parameters are plain ``dict[str, Tensor]`` used through
``torch.func.functional_call``; nothing is updated in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ddsec.engine.inner import SGD, InnerOptimizer
from ddsec.engine.population import Params
from ddsec.engine.schedule import InnerStep, replay
from ddsec.engine.synthetic import SyntheticSet

Forward = Callable[[Params, Tensor], Tensor]


def expand_targets(targets: Tensor, models: int) -> Tensor:
    """Repeat a batch's targets (``[B]`` or ``[B, K]``) for ``models`` models: ``[M·B]`` or ``[M·B, K]``."""
    return targets.unsqueeze(0).expand(models, *targets.shape).reshape(-1, *targets.shape[1:])


def population_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy summed over models, averaged over each model's batch.

    Args:
        logits: ``[M, B, K]``.
        targets: int64 ``[B]`` class indices or float ``[B, K]`` probabilities, shared by all models.

    Returns:
        A scalar whose gradient w.r.t. a population's parameters is every model's own gradient.
    """
    models, batch = logits.shape[:2]
    flat = logits.reshape(models * batch, -1)
    return F.cross_entropy(flat, expand_targets(targets, models), reduction="sum") / batch


def inner_grad(
    forward: Forward, theta: Params, x: Tensor, y: Tensor, *, create_graph: bool
) -> tuple[Tensor, ...]:
    """``∇_θ ℓ(f(x; θ), y)`` for every model of the population ``theta`` (leaves requiring grad).

    Returns:
        One gradient per entry of ``theta``, in its order and shapes (``[M, …]``).
    """
    with torch.enable_grad():
        loss = population_loss(forward(theta, x), y)
        return torch.autograd.grad(loss, list(theta.values()), create_graph=create_graph)


def leaves(theta: Params) -> Params:
    """Detached copies of ``theta`` that require grad (fresh autograd leaves)."""
    return {k: v.detach().requires_grad_(True) for k, v in theta.items()}


def unroll(
    forward: Forward,
    params: Params,
    synthetic: SyntheticSet,
    *,
    optimizer: InnerOptimizer = SGD(),
    plan: list[InnerStep] | None = None,
    on_step: Callable[[int, Params], None] | None = None,
) -> Params:
    """Train a population on the synthetic set without keeping any graph.

    Args:
        forward: ``(params [M, …], x [B, …]) -> logits [M, B, K]``.
        params: the population ``θ_0`` (leading model dimension ``M``).
        synthetic: the step batches and learned hyper-parameters; used as constants.
        optimizer: the inner update rule (default: SGD with the set's learned step sizes, and its
            learned momenta if it has them).
        plan: what each step trains on (:mod:`ddsec.engine.schedule`); default: the set replayed
            as distilled.
        on_step: called as ``on_step(t, θ_t)`` for ``t = 0 … T`` (before each step and at the end).

    Returns:
        ``θ_T``, detached, ``[M, …]`` tensors.
    """
    learned = {k: v.detach() for k, v in synthetic.hypers().items()}
    plan = replay(synthetic.steps, synthetic.total_steps) if plan is None else plan
    names = list(params)
    theta, state = tuple(params[k].detach() for k in names), ()
    for t, step in enumerate(plan):
        if on_step is not None:
            on_step(t, dict(zip(names, theta)))
        images, targets = (None, None) if step.slot is None else (
            synthetic.images[step.slot].detach(), synthetic.targets(step.slot).detach())
        x, y = step.batch(images, targets)
        grads = inner_grad(forward, leaves(dict(zip(names, theta))), x, y, create_graph=False)
        theta, state = optimizer.update(theta, state, grads, step.hypers(learned), t)
        theta, state = tuple(v.detach() for v in theta), tuple(v.detach() for v in state)
    if on_step is not None:
        on_step(len(plan), dict(zip(names, theta)))
    return dict(zip(names, theta))
