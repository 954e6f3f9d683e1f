"""Held-out evaluation of a synthetic set: train fresh models with it, measure them on test data.

Wang et al. (arXiv 1811.10959), §4: a distilled set is judged by the test accuracy of models that
did *not* take part in distillation (fresh random inits, a held-out population, or the fixed
init it was made for) after the same ``T`` inner steps with the learned step sizes. Reported
as mean ± std over models, on the whole test split, before (step 0) and after the steps.

The gradient-matching family (Zhao et al., arXiv 2006.05929, 2102.08259, 2110.04181) judges a
set by the *train-epochs* protocol instead (:func:`evaluate_train_epochs`): train fresh models
on all its images for a fixed number of epochs with SGD (momentum 0.9, weight decay 5e-4,
learning rate 0.01 divided by 10 at half the epochs, batches of 256), optionally with DSA
augmentation. :func:`train_on` is that training loop, also used by gradient matching's inner loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ddsec.engine import SGD, InitDistribution, InnerOptimizer, SyntheticSet, draw_limit, population_forward, select, stack_params, unroll
from ddsec.errors import NonFiniteError


@dataclass(frozen=True)
class EvalResult:
    """Accuracies of ``M`` held-out models, fractions in [0, 1].

    Attributes:
        before: float ``[M]``, at initialisation.
        after: float ``[M]``, after all ``T`` steps.
        per_step: float ``[T + 1, M]`` accuracy after each step, when asked for.
    """

    before: Tensor
    after: Tensor
    per_step: Tensor | None = None

    @property
    def models(self) -> int:
        """``M``."""
        return self.after.shape[0]

    def summary(self) -> dict[str, float | int]:
        """Mean and standard deviation, as plain numbers (``std`` is 0 for one model)."""
        std = float(self.after.std()) if self.models > 1 else 0.0
        return {
            "models": self.models,
            "acc_before_mean": float(self.before.mean()),
            "acc_mean": float(self.after.mean()),
            "acc_std": std,
        }


def heldout_count(requested: int | None, heldout: InitDistribution, *, flag: str,
                  default: int | None = None) -> tuple[int, str | None]:
    """How many held-out models an evaluation of ``requested`` models can draw from ``heldout``.

    A held-out population smaller than the count is used whole (a request such as
    ``--eval-models 50`` must not fail after a long run on the 10-model population trained on
    first use). Other inits keep the count (fixed ones are drawn once downstream, see
    :func:`ddsec.engine.distinct_draws`). ``requested`` ``None`` (the flag not given) means
    ``default`` (then required), capped without a note: a default is no request.

    Returns:
        ``(count, note)``: ``note`` is a one-line explanation when a population capped a request.
    """
    if requested is None and default is None:
        raise ValueError("heldout_count needs a default when no count is requested")
    limit = draw_limit(heldout)
    count = default if requested is None else requested
    if heldout.kind == "population" and limit is not None and count > limit:
        note = f"{flag} {requested} is more than the {limit} held-out models: evaluating all {limit}"
        return limit, None if requested is None else note
    return count, None


@torch.no_grad()
def population_predictions(
    model: nn.Module, params: dict[str, Tensor], images: Tensor, *, batching: str = "loop",
    batch_size: int = 1000,
) -> Tensor:
    """Predicted classes of every model on every image: int64 ``[M, N]``.

    Args:
        params: a population (``[M, …]`` tensors).
        images: float ``[N, C, H, W]``, on any device (moved batch by batch to the params').
        batching: ``loop`` by default: on large test batches one call per model measured faster
            on CPU than vmap's grouped convolutions (the unroll, on small batches, uses vmap).
    """
    forward = population_forward(model, batching)
    device = next(iter(params.values())).device
    chunks = [
        forward(params, images[i : i + batch_size].to(device)).argmax(-1).cpu()
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(chunks, dim=1)


def trained_predictions(
    model: nn.Module,
    init: InitDistribution,
    synthetic: SyntheticSet,
    test_images: Tensor,
    *,
    n_models: int,
    generator: torch.Generator,
    on_step: Callable[[int, Tensor], None] | None = None,
    chunk: int = 50,
    batching: str = "auto",
    optimizer: InnerOptimizer = SGD(),
) -> tuple[Tensor, Tensor]:
    """Train ``n_models`` models drawn from ``init`` on ``synthetic``; predict the test images.

    Args:
        model: the architecture (eval mode).
        init: held-out ``p(θ0)``: fresh random inits, a held-out population, or the fixed init.
        synthetic: applied exactly as distilled (step order, learned step sizes, epochs).
        test_images: float ``[N, C, H, W]``.
        n_models: how many models; trained ``chunk`` at a time.
        generator: drives the draws from ``init``.
        on_step: if given, called as ``on_step(t, predictions [m, N])`` after every inner step
            ``t = 1 … T`` of every chunk of ``m`` models.
        chunk: models trained together.
        batching: how the unroll runs the chunk's models (``auto``, ``vmap`` or ``loop``).
        optimizer: the inner update rule (default: SGD with the set's learned step sizes).

    Returns:
        Predicted classes before and after the steps, int64 ``[n_models, N]`` each.
    """
    if n_models < 1:
        raise ValueError(f"n_models must be at least 1, got {n_models}")
    synthetic = synthetic.detached()
    forward = population_forward(model, batching)
    before, after = [], []
    for start in range(0, n_models, chunk):
        params = init.sample(min(chunk, n_models - start), generator)
        before.append(population_predictions(model, params, test_images))

        def record(t: int, theta: dict[str, Tensor]) -> None:
            if on_step is not None and t > 0:
                on_step(t, population_predictions(model, theta, test_images))

        after.append(population_predictions(model, unroll(forward, params, synthetic, optimizer=optimizer, on_step=record), test_images))
    return torch.cat(before), torch.cat(after)


def evaluate_synthetic(
    model: nn.Module,
    init: InitDistribution,
    synthetic: SyntheticSet,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    n_models: int,
    generator: torch.Generator,
    per_step: bool = False,
    chunk: int = 50,
    batching: str = "auto",
    optimizer: InnerOptimizer = SGD(),
) -> EvalResult:
    """Accuracy of ``n_models`` models trained on ``synthetic`` (see :func:`trained_predictions`).

    Args:
        test_labels: int64 ``[N]``, for ``test_images`` ``[N, C, H, W]``.
        per_step: also record accuracy after every inner step.
        optimizer: the inner update rule (see :func:`trained_predictions`).
    """
    labels = test_labels.cpu()
    curves: list[Tensor] = []
    before, after = trained_predictions(
        model, init, synthetic, test_images, n_models=n_models, generator=generator, chunk=chunk, batching=batching,
        optimizer=optimizer, on_step=(lambda t, preds: curves.append((preds == labels).float().mean(1))) if per_step else None,
    )
    accuracy_before, accuracy_after = (before == labels).float().mean(1), (after == labels).float().mean(1)
    if not per_step:
        return EvalResult(accuracy_before, accuracy_after)
    steps = synthetic.total_steps
    chunks = [torch.stack(curves[i : i + steps]) for i in range(0, len(curves), steps)]  # [T, m] per chunk
    curve = torch.cat([accuracy_before.unsqueeze(0), torch.cat(chunks, dim=1)])
    return EvalResult(accuracy_before, accuracy_after, curve)


@dataclass(frozen=True)
class EpochRecipe:
    """SGD for the train-epochs protocol (defaults: the DC/DSA/DM evaluation).

    Attributes:
        epochs: passes over the training images.
        lr: initial learning rate; multiplied by ``decay`` once, after ``epochs // 2`` epochs.
        momentum: heavy-ball momentum (PyTorch's ``SGD`` convention, no dampening).
        weight_decay: L2 penalty added to the gradient.
        batch_size: images per step (the last batch of an epoch may be smaller).
        decay: the one learning-rate multiplier at half the epochs (1: constant).
    """

    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    decay: float = 0.1


def train_on(
    model: nn.Module,
    params: Mapping[str, Tensor],
    images: Tensor,
    labels: Tensor,
    recipe: EpochRecipe,
    *,
    generator: torch.Generator,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Train ``params`` on ``images`` for ``recipe.epochs`` epochs of minibatch SGD (out of place).

    Args:
        model: the architecture, used through ``functional_call``.
        params: name → tensor, the starting weights (not modified).
        images: float ``[M, C, H, W]``.
        labels: int64 ``[M]`` classes or float ``[M, K]`` probabilities.
        recipe: the optimiser settings.
        generator: CPU generator for the batch order and ``augment``'s draws.
        augment: applied to every batch, e.g. per-image DSA.

    Returns:
        The trained weights, detached.

    Raises:
        NonFiniteError: the loss became NaN or infinite.
    """
    weights = {k: v.detach() for k, v in params.items()}
    velocity = {k: torch.zeros_like(v) for k, v in weights.items()}
    images, labels = images.detach(), labels.detach()
    for epoch in range(recipe.epochs):
        lr = recipe.lr * (recipe.decay if epoch >= recipe.epochs // 2 else 1.0)
        order = torch.randperm(images.shape[0], generator=generator).to(images.device)
        for start in range(0, images.shape[0], recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            x = images[batch] if augment is None else augment(images[batch], generator)
            live = {k: v.requires_grad_(True) for k, v in weights.items()}
            loss = F.cross_entropy(functional_call(model, live, (x,)), labels[batch])
            if not torch.isfinite(loss):
                raise NonFiniteError("training on the distilled images gave a NaN/inf loss; the set holds"
                                     " unusable values or the learning rate is too high")
            grads = torch.autograd.grad(loss, list(live.values()))
            for (name, w), g in zip(live.items(), grads, strict=True):
                step = g + recipe.weight_decay * w.detach()
                velocity[name] = recipe.momentum * velocity[name] + step
                weights[name] = (w.detach() - lr * velocity[name]).detach()
    return weights


def evaluate_train_epochs(
    model: nn.Module,
    init: InitDistribution,
    images: Tensor,
    labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    n_models: int,
    recipe: EpochRecipe,
    generator: torch.Generator,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    on_model: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Accuracy of ``n_models`` models from ``init`` trained on ``images`` by the train-epochs protocol.

    Args:
        init: held-out ``p(θ0)``, typically fresh random inits.
        images: float ``[M, C, H, W]``, every image of the set; labels: int64 ``[M]`` or float ``[M, K]``.
        test_images: float ``[N, C, H, W]``; test_labels: int64 ``[N]``.
        recipe: epochs and SGD settings.
        generator: drives the inits, the batch orders and the augmentation.
        augment: per-batch augmentation while training (``None``: none).
        on_model: called as ``on_model(done, n_models)`` after each model.

    Returns:
        Accuracies before and after training (``[n_models]`` each).
    """
    if n_models < 1:
        raise ValueError(f"n_models must be at least 1, got {n_models}")
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    starts, trained = [], []
    for index in range(n_models):
        start = select(init.sample(1, generator), 0)
        starts.append(start)
        trained.append(train_on(model, start, images, labels, recipe, generator=generator, augment=augment))
        if on_model is not None:
            on_model(index + 1, n_models)
    truth = test_labels.cpu()
    before = population_predictions(model, stack_params(starts), test_images)
    after = population_predictions(model, stack_params(trained), test_images)
    return EvalResult((before == truth).float().mean(1), (after == truth).float().mean(1))
