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
the gradients are then averaged over the models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsec.engine.population import Params, is_stacked, population_forward, population_size
from ddsec.engine.synthetic import SyntheticSet
from ddsec.engine.unroll import Forward, expand_targets, inner_grad, leaves, sgd_step

MODES = ("hvp", "autograd")
LossFn = Callable[[Tensor, Tensor], Tensor]


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
) -> tuple[Tensor, Tensor, Tensor]:
    lrs = synthetic.lrs().detach()
    images = synthetic.images.detach()
    steps = synthetic.steps

    # Forward: θ_0 … θ_T, plus (θ_t leaf, x̃ leaf, G_t with graph) when keeping graphs.
    thetas: list[Params] = [{k: v.detach() for k, v in theta0.items()}]
    kept: list[tuple[Params, Tensor, tuple[Tensor, ...]]] = []
    for t in range(synthetic.total_steps):
        theta = leaves(thetas[-1])
        x = images[t % steps].clone().requires_grad_(keep_graphs)
        grads = inner_grad(forward, theta, x, synthetic.labels[t % steps], create_graph=keep_graphs)
        if keep_graphs:
            kept.append((theta, x, grads))
        thetas.append({k: v.detach() for k, v in sgd_step(thetas[-1], grads, lrs[t]).items()})

    theta_T = leaves(thetas[-1])
    with torch.enable_grad():
        loss = _outer_loss(forward, theta_T, x_real, y_real, loss_fn)
        g = torch.autograd.grad(loss, list(theta_T.values()))

    images_grad = torch.zeros_like(images)
    eta_grad = torch.zeros_like(lrs)
    for t in reversed(range(synthetic.total_steps)):
        s = t % steps
        if keep_graphs:
            theta, x, grads = kept.pop()
        else:
            theta = leaves(thetas[t])
            x = images[s].clone().requires_grad_(True)
            grads = inner_grad(forward, theta, x, synthetic.labels[s], create_graph=True)
        eta_grad[t] = -sum((G.detach() * gi).sum() for G, gi in zip(grads, g))
        *hg, xg = torch.autograd.grad(
            grads, [*theta.values(), x], grad_outputs=g, materialize_grads=True
        )
        images_grad[s] -= lrs[t] * xg
        g = tuple(gi - lrs[t] * h for gi, h in zip(g, hg))
        thetas[t + 1] = {}  # free θ_{t+1} as soon as it is no longer needed
    raw_grad = eta_grad * torch.sigmoid(synthetic.raw_lrs.detach())
    return loss.detach(), images_grad, raw_grad


def _autograd(
    forward: Forward,
    theta0: Params,
    synthetic: SyntheticSet,
    x_real: Tensor,
    y_real: Tensor,
    loss_fn: LossFn,
) -> tuple[Tensor, Tensor, Tensor]:
    images = synthetic.images.detach().requires_grad_(True)
    raw = synthetic.raw_lrs.detach().requires_grad_(True)
    with torch.enable_grad():
        lrs = F.softplus(raw)
        theta = leaves(theta0)
        for t in range(synthetic.total_steps):
            s = t % synthetic.steps
            grads = inner_grad(forward, theta, images[s], synthetic.labels[s], create_graph=True)
            theta = sgd_step(theta, grads, lrs[t])
        loss = _outer_loss(forward, theta, x_real, y_real, loss_fn)
        images_grad, raw_grad = torch.autograd.grad(loss, [images, raw])
    return loss.detach(), images_grad, raw_grad


def meta_grad(
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
) -> tuple[Tensor, Tensor, Tensor]:
    """Outer loss after the unroll, and its gradients w.r.t. the images and raw step sizes.

    Args:
        model: any ``nn.Module``; used only through ``functional_call`` (its own parameters are
            ignored, its buffers are used). Must have no active dropout (call ``model.eval()``).
        params: ``θ_0`` as from ``model.named_parameters()``, or a population: the same names
            with a leading model dimension ``M`` on every tensor. Treated as constants.
        synthetic: the synthetic set (images ``[S, N, C, H, W]``, labels ``[S, N]``, raw step
            sizes ``[T]``); gradients are taken w.r.t. its images and raw step sizes.
        x_real: real inputs ``[B, C, H, W]``, same dtype as the images.
        y_real: targets for ``loss_fn``, e.g. int64 ``[B]``.
        mode: ``"hvp"`` (back-gradient pass) or ``"autograd"`` (reference).
        keep_graphs: ``hvp`` only: keep each step's graph from the forward pass instead of
            recomputing it (faster, more memory).
        batching: ``"auto"``, ``"vmap"`` or ``"loop"`` over a population's models.
        loss_fn: outer loss on ``(logits [B', K], targets [B'])`` returning the batch mean.

    Returns:
        ``(loss, images_grad, raw_lrs_grad)``: the scalar outer loss (averaged over models),
        ``images_grad`` shaped like ``synthetic.images`` and ``raw_lrs_grad`` shaped ``[T]``.
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
