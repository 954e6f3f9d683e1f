"""Held-out evaluation of a synthetic set: train fresh models with it, measure them on test data.

Wang et al. (arXiv 1811.10959), §4: a distilled set is judged by the test accuracy of models that
did *not* take part in distillation (fresh random inits, a held-out population, or the fixed
init it was made for) after the same ``T`` inner steps with the learned step sizes. Reported
as mean ± std over models, on the whole test split, before (step 0) and after the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ddsec.engine import InitDistribution, SyntheticSet, population_forward, unroll


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

        after.append(population_predictions(model, unroll(forward, params, synthetic, on_step=record), test_images))
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
) -> EvalResult:
    """Accuracy of ``n_models`` models trained on ``synthetic`` (see :func:`trained_predictions`).

    Args:
        test_labels: int64 ``[N]``, for ``test_images`` ``[N, C, H, W]``.
        per_step: also record accuracy after every inner step.
    """
    labels = test_labels.cpu()
    curves: list[Tensor] = []
    before, after = trained_predictions(
        model, init, synthetic, test_images, n_models=n_models, generator=generator, chunk=chunk, batching=batching,
        on_step=(lambda t, preds: curves.append((preds == labels).float().mean(1))) if per_step else None,
    )
    accuracy_before, accuracy_after = (before == labels).float().mean(1), (after == labels).float().mean(1)
    if not per_step:
        return EvalResult(accuracy_before, accuracy_after)
    steps = synthetic.total_steps
    chunks = [torch.stack(curves[i : i + steps]) for i in range(0, len(curves), steps)]  # [T, m] per chunk
    curve = torch.cat([accuracy_before.unsqueeze(0), torch.cat(chunks, dim=1)])
    return EvalResult(accuracy_before, accuracy_after, curve)
