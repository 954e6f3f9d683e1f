"""The outer gradient of the distillation objective w.r.t. synthetic images and step sizes.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §3 and appendix: after ``T`` unrolled
inner steps the outer loss ``L = ℓ(f(x_real; θ_T), y_real)`` is differentiated w.r.t. the
synthetic images ``x̃`` and the raw step sizes ``ρ`` (``η = softplus(ρ)``). Two modes:

``hvp`` (default), the reverse-mode back-gradient pass. Keep ``θ_0 … θ_T`` only; then walk
``t = T−1 … 0`` with ``g = ∂L/∂θ_{t+1}``, rebuild ``G_t = ∇_θ ℓ_t(θ_t, x̃_s)`` with its graph and
take one ``torch.autograd.grad(G_t, [θ_t, x̃_s], grad_outputs=g)``, which gives the
Hessian-vector product ``H_t g`` and the mixed term ``(∂²ℓ_t/∂x̃∂θ)ᵀ g``:

- ``∂L/∂x̃_s += −η_t (∂²ℓ_t/∂x̃∂θ)ᵀ g``,
- ``∂L/∂η_t = −G_t·g``,
- ``∂L/∂θ_t = g − η_t H_t g``.

Memory is ``O(T·|θ|)`` plus one step's graph. With ``keep_graphs=True`` the step graphs are
kept from the forward pass instead of rebuilt (faster, ``O(T·activations)`` memory).

``autograd``, the reference: plain double-backward through the whole unroll.

Both support populations (a leading model dimension on every parameter tensor): the loss and
the gradients are then averaged over the models. When the set's labels are learned
(``label_logits``), :func:`meta_grads` also returns their gradient: the same
``torch.autograd.grad`` call takes the mixed term ``(∂²ℓ_t/∂ỹ∂θ)ᵀ g`` as well.

With learned momenta (``v_{t+1} = μ_t v_t + G_t``, ``θ_{t+1} = θ_t − η_t v_{t+1}``) the pass also
carries ``a = ∂L/∂v_{t+1}`` (zero at ``t = T−1``): with ``c = a − η_t g``, the same call takes
``grad_outputs=c``, and ``∂L/∂x̃_s += (∂²ℓ_t/∂x̃∂θ)ᵀ c``, ``∂L/∂η_t = −v_{t+1}·g``,
``∂L/∂μ_t = v_t·c``, ``∂L/∂θ_t = g + H_t c``, ``∂L/∂v_t = μ_t c``. The forward pass keeps
``v_1 … v_T`` too, doubling the ``O(T·|θ|)`` memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsec.engine.population import Params, is_stacked, population_forward, population_size
from ddsec.engine.synthetic import SyntheticSet
from ddsec.engine.unroll import Forward, expand_targets, heavy_ball, inner_grad, leaves, sgd_step

MODES = ("hvp", "autograd")
LossFn = Callable[[Tensor, Tensor], Tensor]


class MetaGradient(NamedTuple):
    """The outer loss and its gradients (``label_logits`` and ``raw_momenta`` are ``None`` unless
    the labels, respectively the momenta, are learned)."""

    loss: Tensor
    images: Tensor
    raw_lrs: Tensor
    label_logits: Tensor | None
    raw_momenta: Tensor | None = None


def _targets(synthetic: SyntheticSet, s: int, track: bool) -> tuple[Tensor, Tensor | None]:
    """Step ``s``'s inner targets and, for learned labels, the logits leaf they were built from."""
    if synthetic.label_logits is None:
        return synthetic.labels[s], None
    leaf = synthetic.label_logits[s].detach().clone().requires_grad_(track)
    with torch.enable_grad():
        return torch.softmax(leaf, dim=-1), leaf


def _outer_loss(forward: Forward, theta: Params, x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
    """``loss_fn`` on every model's logits, averaged over models (``loss_fn`` averages the batch)."""
    logits = forward(theta, x)
    return loss_fn(logits.flatten(0, 1), expand_targets(y, logits.shape[0]))


def _check_inputs(model: nn.Module, synthetic: SyntheticSet, x_real: Tensor) -> None:
    stochastic = [
        type(m).__name__
        for m in model.modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
    ]
    if stochastic:
        raise ValueError(
            f"the model has active {stochastic[0]} layers; call model.eval() first: the inner"
            " steps must be deterministic for their gradients to be replayed"
        )
    if synthetic.images.dtype != x_real.dtype:
        raise ValueError(
            f"synthetic images are {synthetic.images.dtype} but real data is {x_real.dtype}"
        )


def _hvp(
    forward: Forward,
    theta0: Params,
    synthetic: SyntheticSet,
    x_real: Tensor,
    y_real: Tensor,
    loss_fn: LossFn,
    keep_graphs: bool,
) -> MetaGradient:
    lrs = synthetic.lrs().detach()
    momenta = None if synthetic.raw_momenta is None else synthetic.momenta().detach()
    images = synthetic.images.detach()
    steps = synthetic.steps

    # Forward: θ_0 … θ_T (and v_0 = None, v_1 … v_T with momenta), plus (θ_t leaf, x̃ leaf,
    # label leaf, G_t with graph) when keeping graphs.
    thetas: list[Params] = [{k: v.detach() for k, v in theta0.items()}]
    velocities: list[tuple[Tensor, ...] | None] = [None]
    kept: list[tuple[Params, Tensor, Tensor | None, tuple[Tensor, ...]]] = []
    for t in range(synthetic.total_steps):
        theta = leaves(thetas[-1])
        x = images[t % steps].clone().requires_grad_(keep_graphs)
        y, label_leaf = _targets(synthetic, t % steps, keep_graphs)
        grads = inner_grad(forward, theta, x, y, create_graph=keep_graphs)
        if keep_graphs:
            kept.append((theta, x, label_leaf, grads))
        direction = grads
        if momenta is not None:
            direction = tuple(v.detach() for v in heavy_ball(velocities[-1], grads, momenta[t]))
            velocities.append(direction)
        thetas.append({k: v.detach() for k, v in sgd_step(thetas[-1], direction, lrs[t]).items()})

    theta_T = leaves(thetas[-1])
    with torch.enable_grad():
        loss = _outer_loss(forward, theta_T, x_real, y_real, loss_fn)
        g = torch.autograd.grad(loss, list(theta_T.values()))

    images_grad = torch.zeros_like(images)
    eta_grad = torch.zeros_like(lrs)
    mu_grad = None if momenta is None else torch.zeros_like(momenta)
    labels_grad = None if synthetic.label_logits is None else torch.zeros_like(synthetic.label_logits.detach())
    velocity_adjoint = None  # ∂L/∂v_{t+1}, momenta only
    for t in reversed(range(synthetic.total_steps)):
        s = t % steps
        if keep_graphs:
            theta, x, label_leaf, grads = kept.pop()
        else:
            theta = leaves(thetas[t])
            x = images[s].clone().requires_grad_(True)
            y, label_leaf = _targets(synthetic, s, True)
            grads = inner_grad(forward, theta, x, y, create_graph=True)
        if momenta is None:  # plain SGD: G_t's adjoint is −η_t g, applied as a scale after the call
            direction, adjoint, scale = grads, g, -lrs[t]
        else:
            direction, scale = velocities[t + 1], 1.0
            adjoint = (tuple(-lrs[t] * gi for gi in g) if velocity_adjoint is None
                       else tuple(a - lrs[t] * gi for a, gi in zip(velocity_adjoint, g)))
        eta_grad[t] = -sum((d.detach() * gi).sum() for d, gi in zip(direction, g))
        inputs = [*theta.values(), x, *([] if label_leaf is None else [label_leaf])]
        mixed = torch.autograd.grad(grads, inputs, grad_outputs=adjoint, materialize_grads=True)
        hg, xg = mixed[: len(theta)], mixed[len(theta)]
        images_grad[s] += scale * xg
        if labels_grad is not None:
            labels_grad[s] += scale * mixed[-1]
        g = tuple(gi + scale * h for gi, h in zip(g, hg))
        if momenta is not None:
            if velocities[t] is not None:
                mu_grad[t] = sum((v * c).sum() for v, c in zip(velocities[t], adjoint))
            velocity_adjoint = tuple(momenta[t] * c for c in adjoint)
            velocities[t + 1] = None
        thetas[t + 1] = {}  # free θ_{t+1} as soon as it is no longer needed
    raw_grad = eta_grad * torch.sigmoid(synthetic.raw_lrs.detach())
    raw_mu_grad = None if mu_grad is None else mu_grad * momenta * (1 - momenta)
    return MetaGradient(loss.detach(), images_grad, raw_grad, labels_grad, raw_mu_grad)


def _autograd(
    forward: Forward,
    theta0: Params,
    synthetic: SyntheticSet,
    x_real: Tensor,
    y_real: Tensor,
    loss_fn: LossFn,
) -> MetaGradient:
    images = synthetic.images.detach().requires_grad_(True)
    raw = synthetic.raw_lrs.detach().requires_grad_(True)
    logits = None if synthetic.label_logits is None else synthetic.label_logits.detach().requires_grad_(True)
    raw_mu = None if synthetic.raw_momenta is None else synthetic.raw_momenta.detach().requires_grad_(True)
    learned = [t for t in (logits, raw_mu) if t is not None]
    with torch.enable_grad():
        lrs = F.softplus(raw)
        theta = leaves(theta0)
        velocity = None
        for t in range(synthetic.total_steps):
            s = t % synthetic.steps
            y = synthetic.labels[s] if logits is None else torch.softmax(logits[s], dim=-1)
            grads = inner_grad(forward, theta, images[s], y, create_graph=True)
            if raw_mu is not None:
                grads = velocity = heavy_ball(velocity, grads, torch.sigmoid(raw_mu[t]))
            theta = sgd_step(theta, grads, lrs[t])
        loss = _outer_loss(forward, theta, x_real, y_real, loss_fn)
        images_grad, raw_grad, *rest = torch.autograd.grad(loss, [images, raw, *learned], materialize_grads=True)
    labels_grad = rest.pop(0) if logits is not None else None
    mu_grad = rest.pop(0) if raw_mu is not None else None
    return MetaGradient(loss.detach(), images_grad, raw_grad, labels_grad, mu_grad)


def meta_grads(
    model: nn.Module,
    params: Mapping[str, Tensor],
    synthetic: SyntheticSet,
    x_real: Tensor,
    y_real: Tensor,
    *,
    mode: str = "hvp",
    keep_graphs: bool = False,
    batching: str = "auto",
    loss_fn: LossFn = F.cross_entropy,
) -> MetaGradient:
    """Outer loss after the unroll, and its gradients w.r.t. the images, raw step sizes and learned labels.

    Args:
        model: any ``nn.Module``; used only through ``functional_call`` (its own parameters are
            ignored, its buffers are used). Must have no active dropout (call ``model.eval()``).
        params: ``θ_0`` as from ``model.named_parameters()``, or a population: the same names
            with a leading model dimension ``M`` on every tensor. Treated as constants.
        synthetic: the synthetic set (images ``[S, N, C, H, W]``, labels ``[S, N]``, raw step
            sizes ``[T]``); gradients are taken w.r.t. its images, raw step sizes, and its label
            logits and raw momenta when those are learned.
        x_real: real inputs ``[B, C, H, W]``, same dtype as the images.
        y_real: targets for ``loss_fn``, e.g. int64 ``[B]``.
        mode: ``"hvp"`` (back-gradient pass) or ``"autograd"`` (reference).
        keep_graphs: ``hvp`` only: keep each step's graph from the forward pass instead of
            recomputing it (faster, more memory).
        batching: ``"auto"``, ``"vmap"`` or ``"loop"`` over a population's models.
        loss_fn: outer loss on ``(logits [B', K], targets [B'])`` returning the batch mean.

    Returns:
        ``(loss, images, raw_lrs, label_logits, raw_momenta)``: the scalar outer loss (averaged
        over models) and its gradients, shaped like ``synthetic.images``, ``[T]``,
        ``synthetic.label_logits`` and ``[T]`` (``None`` when the labels, respectively the momenta,
        are not learned).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if keep_graphs and mode != "hvp":
        raise ValueError("keep_graphs applies to mode='hvp' only")
    _check_inputs(model, synthetic, x_real)
    names = [name for name, _ in model.named_parameters()]
    theta0 = {k: params[k] for k in names} if is_stacked(model, params) else {
        k: params[k].unsqueeze(0) for k in names
    }
    if population_size(theta0) < 1:
        raise ValueError("the population is empty")
    forward = population_forward(model, batching)
    if mode == "hvp":
        return _hvp(forward, theta0, synthetic, x_real, y_real, loss_fn, keep_graphs)
    return _autograd(forward, theta0, synthetic, x_real, y_real, loss_fn)


def meta_grad(
    model: nn.Module,
    params: Mapping[str, Tensor],
    synthetic: SyntheticSet,
    x_real: Tensor,
    y_real: Tensor,
    **kwargs,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, images_grad, raw_lrs_grad)``: :func:`meta_grads` without the labels' gradient.

    Args and keywords as :func:`meta_grads` (``mode``, ``keep_graphs``, ``batching``, ``loss_fn``).

    Returns:
        The scalar outer loss (averaged over models), ``images_grad`` shaped like
        ``synthetic.images`` and ``raw_lrs_grad`` shaped ``[T]``.
    """
    return tuple(meta_grads(model, params, synthetic, x_real, y_real, **kwargs)[:3])
