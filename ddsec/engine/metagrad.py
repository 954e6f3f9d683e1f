"""The outer gradient of the distillation objective w.r.t. synthetic images and step sizes.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §3 and appendix: after ``T`` unrolled
inner steps the outer loss ``L = ℓ(f(x_real; θ_T), y_real)`` is differentiated w.r.t. the
synthetic images ``x̃`` and the raw step sizes ``ρ`` (``η = softplus(ρ)``). Two modes:

``hvp`` (default), the reverse-mode back-gradient pass. Keep ``θ_0 … θ_T`` and the inner
optimizer's states ``s_0 … s_T`` only; then walk ``t = T−1 … 0`` with the adjoints
``θ̄ = ∂L/∂θ_{t+1}`` and ``s̄ = ∂L/∂s_{t+1}``:

- the vector-Jacobian product of the update ``(θ_{t+1}, s_{t+1}) = update(θ_t, s_t, G_t, h_t)``
  alone (elementwise and cheap, by autograd on the optimizer value, see
  :mod:`ddsec.engine.inner`) gives ``Ḡ = ∂L/∂G_t``, the hyper-parameter gradients ``∂L/∂h_t``
  (step size, learned momentum), ``∂L/∂s_t`` and the direct part of ``∂L/∂θ_t``;
- rebuild ``G_t = ∇_θ ℓ_t(θ_t, x̃_s)`` with its graph and take one
  ``torch.autograd.grad(G_t, [θ_t, x̃_s], grad_outputs=Ḡ)``: the Hessian-vector product
  ``H_t Ḡ`` (added to ``∂L/∂θ_t``) and the mixed term ``(∂²ℓ_t/∂x̃∂θ)ᵀ Ḡ`` (added to ``∂L/∂x̃_s``).

For the paper's plain SGD step ``θ_{t+1} = θ_t − η_t G_t`` this is ``Ḡ = −η_t θ̄``,
``∂L/∂η_t = −G_t·θ̄`` and ``∂L/∂θ_t = θ̄ − η_t H_t θ̄``; momentum, weight decay and Adam need
nothing more than their ``update``. Memory is ``O(T·(|θ| + |s|))`` plus one step's graph. With
``keep_graphs=True`` the step graphs are kept from the forward pass instead of rebuilt (faster,
``O(T·activations)`` memory). With ``theta_every=k`` only every ``k``-th ``(θ_t, s_t)`` is kept
and each segment's forward is recomputed on the way back (:mod:`ddsec.engine.segments`): memory
``O((T/k + k)·(|θ| + |s|))``, ``O(√T·(|θ| + |s|))`` for ``k = ⌈√T⌉``, the same gradients.

With ``compile=True`` the outer loss's gradient (when vmapped) and the per-step work (``G_t`` on
the forward unroll and on the way back, and the VJP of ``G_t`` with ``Ḡ``) run as compiled
``torch.func`` graphs (:mod:`ddsec.engine.compiled`); the update's adjoint and the step batches
stay eager, so every optimizer, plan and learned label works compiled, and ``keep_graphs`` then
keeps each step's ``G_t`` (detached, ``O(T·|θ|)``) instead of its graph. Where the compiled path
cannot serve (``mode="autograd"``, a population run with a Python loop, a graph that fails to compile)
the call runs eager and says so once with a :class:`CompileFallback` warning.

``autograd``, the reference: plain double-backward through the whole unroll.

Both support populations (a leading model dimension on every parameter tensor): the loss and
the gradients are then averaged over the models. With ``batching="auto"`` the inner steps run the
models together with ``vmap``; the outer loss on a real batch of convolutional models on CPU runs
them one at a time (compiled or not), which measured faster there
(:func:`~ddsec.engine.population.resolve_batching`). :func:`meta_grads` returns the gradient
w.r.t. every raw learned tensor of the set (:mod:`ddsec.engine.learned`): the inner
hyper-parameters' from the update's adjoint through their parametrisation, and, when the labels
are learned, theirs from the same ``torch.autograd.grad`` call as the image term (the mixed term
``(∂²ℓ_t/∂ỹ∂θ)ᵀ Ḡ``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsec.engine.compiled import CompiledStep, compiled_step
from ddsec.engine.population import Params, is_stacked, population_forward, population_size, resolve_batching
from ddsec.engine.schedule import InnerStep, replay
from ddsec.engine.segments import ThetaTape, segment_length
from ddsec.engine.synthetic import SyntheticSet
from ddsec.engine.inner import SGD, InnerOptimizer
from ddsec.engine.learned import LABELS, learnable
from ddsec.engine.unroll import Forward, expand_targets, inner_grad, leaves

MODES = ("hvp", "autograd")
LossFn = Callable[[Tensor, Tensor], Tensor]
OuterAdjoint = Callable[[tuple[Tensor, ...], CompiledStep | None], tuple[Tensor, tuple[Tensor, ...]]]
"""``(θ_T, the compiled kernels or None) -> (L, ∂L/∂θ_T)``: the outer loss on the real batch and its gradient."""


class CompileFallback(UserWarning):
    """``compile=True`` could not be served: this call ran eager (the message says why)."""


class MetaGradient(NamedTuple):
    """The outer loss (a scalar) and its gradients: w.r.t. the images (shaped like them) and
    w.r.t. each raw learned tensor of the set, by name (shaped like ``synthetic.learned``)."""

    loss: Tensor
    images: Tensor
    learned: dict[str, Tensor]

    def fields(self) -> dict[str, Tensor]:
        """The loss and every gradient by name (``"loss"``, ``"images"``, then the learned
        settings'), e.g. to compare two modes field by field."""
        return {"loss": self.loss, "images": self.images, **self.learned}


def _targets(synthetic: SyntheticSet, s: int, track: bool) -> tuple[Tensor, Tensor | None]:
    """Step ``s``'s inner targets and, for learned labels, the logits leaf they were built from."""
    logits = synthetic.learned.get("labels")
    if logits is None:
        return synthetic.labels[s], None
    leaf = logits[s].detach().clone().requires_grad_(track)
    with torch.enable_grad():
        return LABELS.value(leaf), leaf


def _raw_gradients(synthetic: SyntheticSet, value_grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """Gradients w.r.t. the raw learned tensors from those w.r.t. their values (each setting's
    parametrisation differentiated by autograd; elementwise or per image, so cheap)."""
    raw = {name: synthetic.learned[name].detach().requires_grad_(True) for name in value_grads}
    with torch.enable_grad():
        values = [learnable(name).value(tensor) for name, tensor in raw.items()]
        grads = torch.autograd.grad(values, list(raw.values()), list(value_grads.values()))
    return dict(zip(raw, grads))


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


def _detached(tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(t.detach() for t in tensors)


def _tracked(tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(t.detach().requires_grad_(True) for t in tensors)


def _update_adjoint(
    optimizer: InnerOptimizer,
    theta: tuple[Tensor, ...],
    state: tuple[Tensor, ...],
    grads: tuple[Tensor, ...],
    hypers: dict[str, Tensor],
    t: int,
    cotangents: tuple[Tensor, ...],
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...], dict[str, Tensor]]:
    """The vector-Jacobian product of one inner update ``(θ', s') = update(θ, s, G, h)``.

    Args:
        cotangents: ``∂L/∂θ'`` then ``∂L/∂s'``, flat, in the update's output order.

    Returns:
        ``(∂L/∂θ through the update alone, ∂L/∂s, ∂L/∂G, {name: ∂L/∂h})``.
    """
    theta, state, grads = _tracked(theta), _tracked(state), _tracked(grads)
    hypers = {k: v.detach().requires_grad_(True) for k, v in hypers.items()}
    with torch.enable_grad():
        new_theta, new_state = optimizer.update(theta, state, grads, hypers, t)
        inputs = [*theta, *state, *grads, *hypers.values()]
        adjoint = torch.autograd.grad([*new_theta, *new_state], inputs, cotangents, allow_unused=True,
                                      materialize_grads=True)
    n, m = len(theta), len(state)
    return adjoint[:n], adjoint[n:n + m], adjoint[n + m:2 * n + m], dict(zip(hypers, adjoint[2 * n + m:]))


def _step_batch(
    synthetic: SyntheticSet, images: Tensor, step: InnerStep, track: bool
) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor]:
    """``(image leaf, label leaf, inputs, targets)`` of one inner step; the leaves are ``None`` when
    the step has no synthetic images (or, for labels, when they are not learned)."""
    if step.slot is None:
        x, y = step.batch(None, None)
        return None, None, x, y
    leaf = images[step.slot].clone().requires_grad_(track)
    y, label_leaf = _targets(synthetic, step.slot, track)
    with torch.enable_grad():
        x, y = step.batch(leaf, y)
    return leaf, label_leaf, x, y


class StepGraph(NamedTuple):
    """One inner step's loss gradient ``G_t`` at ``θ_t``, as the back pass reads it."""

    theta: Params  # θ_t as autograd leaves, [M, …] tensors
    image_leaf: Tensor | None  # the step's synthetic images [N, C, H, W] (None: a clean step)
    label_leaf: Tensor | None  # their label logits [N, K] when learned
    grads: tuple[Tensor, ...]  # G_t, shaped like θ_t; with its graph when built for the back pass


def _outer_adjoint(forward: Forward, names: list[str], theta: tuple[Tensor, ...], x_real: Tensor, y_real: Tensor,
                   loss_fn: LossFn) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``(L, ∂L/∂θ_T)``: the outer loss (detached) at ``θ_T`` and its gradient."""
    theta_T = leaves(dict(zip(names, theta)))
    with torch.enable_grad():
        loss = _outer_loss(forward, theta_T, x_real, y_real, loss_fn)
        return loss.detach(), torch.autograd.grad(loss, list(theta_T.values()))


def _compiled_mixed(
    kernels: CompiledStep,
    names: tuple[str, ...],
    theta: tuple[Tensor, ...],
    synthetic: SyntheticSet,
    images: Tensor,
    step: InnerStep,
    grads_adjoint: tuple[Tensor, ...],
) -> tuple[tuple[Tensor, ...], Tensor | None, Tensor | None]:
    """``(H_t Ḡ, image term [N, C, H, W] or None, label term [N, K] or None)`` of one step, compiled.

    The kernel differentiates ``G_t`` w.r.t. the step's batch and targets; eager autograd carries
    those terms back through how the batch was built (clean images, shifts, the labels' softmax)
    to the step's synthetic images and label logits.
    """
    leaf, label_leaf, x, y = _step_batch(synthetic, images, step, True)
    hvp, x_bar, y_bar = kernels.back(names, theta, x.detach(), y.detach(), grads_adjoint)
    if leaf is None:
        return hvp, None, None
    outputs, cotangents = [x], [x_bar]
    if label_leaf is not None:
        outputs.append(y)
        cotangents.append(y_bar)
    mixed = torch.autograd.grad(outputs, [v for v in (leaf, label_leaf) if v is not None], cotangents,
                                allow_unused=True, materialize_grads=True)
    return hvp, mixed[0], mixed[1] if label_leaf is not None else None


def _hvp(
    forward: Forward,
    outer: OuterAdjoint,
    theta0: Params,
    synthetic: SyntheticSet,
    keep_graphs: bool,
    every: int | None,
    optimizer: InnerOptimizer,
    plan: list[InnerStep],
    kernels: CompiledStep | None = None,
) -> MetaGradient:
    learned = {k: v.detach() for k, v in synthetic.hypers().items()}
    images = synthetic.images.detach()
    names = list(theta0)

    def gradient(t: int, theta: tuple[Tensor, ...], graph: bool) -> StepGraph:
        """``G_t`` at ``θ_t``, with its graph and the image and label leaves when ``graph``."""
        params = leaves(dict(zip(names, theta)))
        leaf, label_leaf, x, y = _step_batch(synthetic, images, plan[t], graph)
        return StepGraph(params, leaf, label_leaf, inner_grad(forward, params, x, y, create_graph=graph))

    def compiled_gradient(t: int, theta: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """``G_t`` at ``θ_t`` by the compiled kernel (no graph)."""
        _, _, x, y = _step_batch(synthetic, images, plan[t], False)
        return kernels.grads(tuple(names), theta, x, y)

    def advance(t: int, theta: tuple[Tensor, ...], state: tuple[Tensor, ...],
                graph: bool) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], StepGraph | tuple[Tensor, ...] | None]:
        """``(θ_{t+1}, s_{t+1}, step t's graph (compiled: its G_t) if graph else None)``, detached."""
        if kernels is not None:
            grads = compiled_gradient(t, theta)
            new_theta, new_state = optimizer.update(theta, state, grads, plan[t].hypers(learned), t)
            return _detached(new_theta), _detached(new_state), grads if graph else None
        g = gradient(t, theta, graph)
        new_theta, new_state = optimizer.update(theta, state, _detached(g.grads), plan[t].hypers(learned), t)
        return _detached(new_theta), _detached(new_state), g if graph else None

    # Forward: θ_0 … θ_T and the optimizer states s_0 = () … s_T, all or every k-th (see
    # ddsec.engine.segments), and the step graphs when keeping them.
    tape = ThetaTape(advance, len(plan), every, keep_graphs)
    theta, state = tape.unroll(_detached(tuple(theta0.values())))
    loss, theta_adjoint = outer(theta, kernels)
    state_adjoint = tuple(torch.zeros_like(v) for v in state)  # L does not read the final state

    images_grad = torch.zeros_like(images)
    hyper_grads = {k: torch.zeros_like(v) for k, v in learned.items()}
    labels = synthetic.learned.get("labels")
    labels_grad = None if labels is None else torch.zeros_like(labels.detach())
    for t in reversed(range(len(plan))):
        step = plan[t]
        theta, state, g = tape.pop(t)
        if kernels is None:
            g = gradient(t, theta, True) if g is None else g
            grads = _detached(g.grads)
        else:
            grads = compiled_gradient(t, theta) if g is None else g
        through_update, state_adjoint, grads_adjoint, step_hypers = _update_adjoint(
            optimizer, theta, state, grads, step.hypers(learned), t,
            (*theta_adjoint, *state_adjoint))
        if step.lr_index is not None:
            for name, value in step_hypers.items():
                hyper_grads[name][step.lr_index] += value * (step.lr_scale if name == "lr" else 1.0)
        if kernels is not None:
            hvp, image_mixed, label_mixed = _compiled_mixed(kernels, tuple(names), theta, synthetic, images, step,
                                                            grads_adjoint)
            if image_mixed is not None:
                images_grad[step.slot] += image_mixed
            if label_mixed is not None:
                labels_grad[step.slot] += label_mixed
            theta_adjoint = tuple(a + h for a, h in zip(through_update, hvp))
            continue
        # one call: the Hessian-vector product H_t·Ḡ and the mixed terms for the images and labels
        extra = [v for v in (g.image_leaf, g.label_leaf) if v is not None]
        mixed = torch.autograd.grad(g.grads, [*g.theta.values(), *extra], grad_outputs=grads_adjoint,
                                    materialize_grads=True)
        if g.image_leaf is not None:
            images_grad[step.slot] += mixed[len(names)]
        if g.label_leaf is not None:
            labels_grad[step.slot] += mixed[-1]
        theta_adjoint = tuple(a + h for a, h in zip(through_update, mixed[: len(names)]))
    raw_grads = _raw_gradients(synthetic, hyper_grads)
    return MetaGradient(loss, images_grad, {**raw_grads, **({} if labels_grad is None else {"labels": labels_grad})})


def _autograd(
    forward: Forward,
    outer_forward: Forward,
    theta0: Params,
    synthetic: SyntheticSet,
    x_real: Tensor,
    y_real: Tensor,
    loss_fn: LossFn,
    optimizer: InnerOptimizer,
    plan: list[InnerStep],
) -> MetaGradient:
    images = synthetic.images.detach().requires_grad_(True)
    raw = {name: tensor.detach().requires_grad_(True) for name, tensor in synthetic.learned.items()}
    tracked = synthetic.replaced(images, raw)
    names = list(theta0)
    with torch.enable_grad():
        learned = tracked.hypers()
        theta, state = tuple(leaves(theta0).values()), ()
        for t, step in enumerate(plan):
            if step.slot is None:
                x, y = step.batch(None, None)
            else:
                x, y = step.batch(images[step.slot], tracked.targets(step.slot))
            grads = inner_grad(forward, dict(zip(names, theta)), x, y, create_graph=True)
            theta, state = optimizer.update(theta, state, grads, step.hypers(learned), t)
        loss = _outer_loss(outer_forward, dict(zip(names, theta)), x_real, y_real, loss_fn)
        images_grad, *raw_grads = torch.autograd.grad(loss, [images, *raw.values()], materialize_grads=True)
    return MetaGradient(loss.detach(), images_grad, dict(zip(raw, raw_grads)))


def meta_grads(
    model: nn.Module,
    params: Mapping[str, Tensor],
    synthetic: SyntheticSet,
    x_real: Tensor,
    y_real: Tensor,
    *,
    mode: str = "hvp",
    keep_graphs: bool = False,
    theta_every: int | str | None = None,
    batching: str = "auto",
    loss_fn: LossFn = F.cross_entropy,
    optimizer: InnerOptimizer = SGD(),
    plan: list[InnerStep] | None = None,
    compile: bool = False,
) -> MetaGradient:
    """Outer loss after the unroll, and its gradients w.r.t. the images, raw step sizes and learned labels.

    Args:
        model: any ``nn.Module``; used only through ``functional_call`` (its own parameters are
            ignored, its buffers are used). Must have no active dropout (call ``model.eval()``).
        params: ``θ_0`` as from ``model.named_parameters()``, or a population: the same names
            with a leading model dimension ``M`` on every tensor. Treated as constants.
        synthetic: the synthetic set (images ``[S, N, C, H, W]``, labels ``[S, N]``, its raw
            learned tensors); gradients are taken w.r.t. its images and every learned tensor.
        x_real: real inputs ``[B, C, H, W]``, same dtype as the images.
        y_real: targets for ``loss_fn``, e.g. int64 ``[B]``.
        mode: ``"hvp"`` (back-gradient pass) or ``"autograd"`` (reference).
        keep_graphs: ``hvp`` only: keep each step's graph from the forward pass instead of
            recomputing it (faster, more memory); with ``theta_every``, the current segment's only;
            with ``compile``, each step's ``G_t`` instead of its graph.
        theta_every: ``hvp`` only: keep every ``k``-th ``θ_t`` (and optimizer state) instead of all,
            and recompute each segment's forward on the way back (:mod:`ddsec.engine.segments`):
            memory ``O(√T·|θ|)`` for ``k ≈ √T``, the same gradients. ``None`` (or 1): keep every
            ``θ_t``; ``"auto"``: ``k = ⌈√T⌉``; an int: that ``k``.
        batching: ``"auto"``, ``"vmap"`` or ``"loop"`` over a population's models; ``auto``
            resolves for the step batches and the real batch separately (see the module docstring).
        loss_fn: outer loss on ``(logits [B', K], targets [B'])`` returning the batch mean.
        optimizer: the inner update rule (:mod:`ddsec.engine.inner`; default SGD with the set's
            learned step sizes and, if learned, momenta). Both modes take any optimizer.
        plan: what each inner step trains on (:mod:`ddsec.engine.schedule`: clean images mixed
            in, shifts, clean steps, scaled or fixed step sizes); default: the set replayed as
            distilled.
        compile: ``hvp`` only: run each step's ``G_t`` and its VJP as compiled graphs
            (:mod:`ddsec.engine.compiled`; the first call of a shape compiles, later ones reuse it);
            the same gradients up to rounding. Where it cannot serve, the call runs eager with one
            :class:`CompileFallback` warning. ``False``: eager, the reference.

    Returns:
        ``(loss, images, learned)``: the scalar outer loss (averaged over models), its gradient
        shaped like ``synthetic.images`` and its gradients w.r.t. ``synthetic.learned``, by name.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if keep_graphs and mode != "hvp":
        raise ValueError("keep_graphs applies to mode='hvp' only")
    if theta_every is not None and mode != "hvp":
        raise ValueError("theta_every applies to mode='hvp' only")
    _check_inputs(model, synthetic, x_real)
    names = [name for name, _ in model.named_parameters()]
    theta0 = {k: params[k] for k in names} if is_stacked(model, params) else {
        k: params[k].unsqueeze(0) for k in names
    }
    if population_size(theta0) < 1:
        raise ValueError("the population is empty")
    forward = population_forward(model, batching)
    outer_batching = resolve_batching(model, batching, x_real)
    outer_forward = population_forward(model, outer_batching)
    plan = replay(synthetic.steps, synthetic.total_steps) if plan is None else plan
    if mode == "autograd":
        if compile:
            warnings.warn("compile applies to mode='hvp'; mode='autograd' runs eager", CompileFallback, stacklevel=2)
        return _autograd(forward, outer_forward, theta0, synthetic, x_real, y_real, loss_fn, optimizer, plan)
    every = segment_length(theta_every, len(plan))
    kernels = _kernels(model, batching) if compile else None

    def outer(theta: tuple[Tensor, ...], compiled: CompiledStep | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The :data:`OuterAdjoint` on the real batch: compiled where the kernels serve it vmapped."""
        if compiled is not None and outer_batching == "vmap":
            return compiled.outer(tuple(names), theta, x_real, y_real, loss_fn)
        return _outer_adjoint(outer_forward, names, theta, x_real, y_real, loss_fn)

    if kernels is not None:
        from torch._dynamo.exc import TorchDynamoException  # loaded with torch.compile already

        try:
            return _hvp(forward, outer, theta0, synthetic, keep_graphs, every, optimizer, plan, kernels)
        except TorchDynamoException as exc:
            kernels.failure = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"compile failed for {type(model).__name__} ({kernels.failure}); running eager",
                          CompileFallback, stacklevel=2)
    return _hvp(forward, outer, theta0, synthetic, keep_graphs, every, optimizer, plan)


def _kernels(model: nn.Module, batching: str) -> CompiledStep | None:
    """The compiled step for ``model``, or ``None`` (with one :class:`CompileFallback` warning)
    when it cannot serve: models run one after another, or its compilation failed before."""
    if resolve_batching(model, batching) != "vmap":
        warnings.warn(f"compile needs the models batched with vmap; {type(model).__name__} runs them in a loop,"
                      " eager", CompileFallback, stacklevel=3)
        return None
    kernels = compiled_step(model)
    if kernels.failure is not None:
        warnings.warn(f"compile failed for {type(model).__name__} before ({kernels.failure}); running eager",
                      CompileFallback, stacklevel=3)
        return None
    return kernels


def meta_grad(
    model: nn.Module,
    params: Mapping[str, Tensor],
    synthetic: SyntheticSet,
    x_real: Tensor,
    y_real: Tensor,
    **kwargs,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, images_grad, raw_lrs_grad)``: :func:`meta_grads` with the step sizes' gradient alone.

    Args and keywords as :func:`meta_grads` (``mode``, ``keep_graphs``, ``theta_every``, ``batching``, ``loss_fn``,
    ``compile``).

    Returns:
        The scalar outer loss (averaged over models), ``images_grad`` shaped like
        ``synthetic.images`` and ``raw_lrs_grad`` shaped ``[T]``.
    """
    loss, images_grad, learned = meta_grads(model, params, synthetic, x_real, y_real, **kwargs)
    return loss, images_grad, learned["lr"]
