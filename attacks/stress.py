"""The robustness matrix: replay a poisoning batch on held-out models under many victims.

For each :class:`~ddsec.attacks.victims.Victim` the held-out models train on the batch as that
victim would (batched over models, through the engine's inner optimizer values), and the attack
metrics of :mod:`ddsec.attacks.metrics` are measured on the test split; the label-flip baselines
with the same image budget (class-``K`` images labelled ``T``, replayed with the batch's learned
step sizes) go through the same victims, so every cell has its anchor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsec.attacks.metrics import AttackResult, attack_metrics
from ddsec.attacks.victims import Victim
from ddsec.data import ImageDataset
from ddsec.engine import InitDistribution, SyntheticSet, distinct_draws, population_forward
from ddsec.engine.population import Params
from ddsec.engine.unroll import inner_grad, leaves
from ddsec.evaluate import population_predictions


def random_shift(images: Tensor, pixels: int, generator: torch.Generator) -> Tensor:
    """Every image moved by its own random offset of up to ``pixels`` in each direction, the
    uncovered border zero (the mean pixel in normalised space): float ``[N, C, H, W]``."""
    if pixels == 0:
        return images
    height, width = images.shape[-2:]
    padded = F.pad(images, (pixels,) * 4)
    offsets = torch.randint(0, 2 * pixels + 1, (images.shape[0], 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets)])


@dataclass(frozen=True)
class _Step:
    """One victim step: poisoned (batch step ``s``) or clean, with its step size."""

    poison: int | None
    lr: float


def _plan(victim: Victim, poison: SyntheticSet) -> Iterator[_Step]:
    """The victim's steps in order: warm-up, the ``K`` poisoned (or first-poisoned) steps, after."""
    learned = poison.lrs().detach().cpu().tolist()
    clean = _Step(None, victim.clean_lr)
    yield from [clean] * victim.warmup
    for k in range(victim.steps or poison.total_steps):
        if victim.placement == "first" and k > 0:
            yield clean
        else:
            lr = victim.lr if victim.lr is not None else learned[k % len(learned)] * victim.lr_scale
            yield _Step(k % poison.steps, lr)
    yield from [clean] * victim.after


def train_victims(
    model: nn.Module, params: Params, poison: SyntheticSet, victim: Victim, clean: ImageDataset,
    generator: torch.Generator,
) -> Params:
    """The population ``params`` (``[M, …]``) after training as ``victim`` on ``poison``.

    Args:
        model: the architecture, in eval mode.
        poison: the batch (images ``[S, N, C, H, W]``, hard or soft labels, learned step sizes).
        clean: the victim's clean training data (mixed-in images and clean steps).
        generator: drives the clean draws and shifts (the same for every model).

    Returns:
        Detached ``[M, …]`` parameters.
    """
    forward = population_forward(model, "auto")
    optimizer = victim.inner_optimizer()
    names = list(params)
    theta, state = tuple(params[k].detach() for k in names), ()
    device = theta[0].device
    for i, step in enumerate(_plan(victim, poison)):
        count = victim.clean_batch if step.poison is None else victim.mix
        pick = torch.randperm(len(clean), generator=generator)[:count]
        x, y = clean.images[pick].to(device), clean.labels[pick].to(device)
        if step.poison is not None:
            x_p, y_p = (t.detach() for t in poison.batch(step.poison))
            if y_p.ndim == 2:  # soft labels: the clean images' one-hot rows beside them
                y = F.one_hot(y, y_p.shape[-1]).to(y_p.dtype)
            x, y = torch.cat([x_p, x]), torch.cat([y_p, y])
        x = random_shift(x, victim.augment, generator)
        grads = inner_grad(forward, leaves(dict(zip(names, theta))), x, y, create_graph=False)
        lr = torch.tensor(step.lr, dtype=x.dtype, device=device)
        theta, state = optimizer.update(theta, tuple(s.detach() for s in state), grads, {"lr": lr}, i)
        theta = tuple(t.detach() for t in theta)
    return dict(zip(names, theta))


@dataclass(frozen=True)
class StressCell:
    """One victim's attack metrics on the same held-out models for the batch and each baseline."""

    victim: Victim
    batch: AttackResult
    baselines: dict[str, AttackResult]


def stress_matrix(
    model: nn.Module,
    heldout: InitDistribution,
    poison: SyntheticSet,
    victims: list[Victim],
    train: ImageDataset,
    test: ImageDataset,
    *,
    attack: int,
    target: int,
    n_models: int,
    baselines: dict[str, SyntheticSet] | None = None,
    seed: int = 0,
    on_victim: Callable[[int, int, str], None] | None = None,
) -> list[StressCell]:
    """Replay ``poison`` (and each baseline batch) under every victim on the same held-out models.

    Args:
        heldout: the held-out ``p(θ0)``; ``n_models`` are drawn once and reused for every cell.
        train: the clean data victims mix in; test: where the metrics are measured.
        baselines: name → a batch of the same budget (e.g. label-flip images with ``T`` labels).
        on_victim: called as ``on_victim(done, total, name)`` after each victim.

    Returns:
        One :class:`StressCell` per victim, in order.
    """
    params = heldout.sample(distinct_draws(heldout, n_models), torch.Generator().manual_seed(seed))
    before = attack_metrics(population_predictions(model, params, test.images), test.labels, attack, target,
                            test.num_classes)
    cells = []
    for index, victim in enumerate(victims):
        results = {}
        for name, batch in {"batch": poison, **(baselines or {})}.items():
            trained = train_victims(model, params, batch, victim, train, torch.Generator().manual_seed(seed + 1))
            after = attack_metrics(population_predictions(model, trained, test.images), test.labels, attack, target,
                                   test.num_classes)
            results[name] = AttackResult(before, after)
        cells.append(StressCell(victim, results.pop("batch"), results))
        if on_victim is not None:
            on_victim(index + 1, len(victims), victim.name)
    return cells
