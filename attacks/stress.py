"""The robustness matrix: replay a poisoning batch on held-out models under many victims.

For each :class:`~ddsec.attacks.victims.Victim` the held-out models train on the batch as that
victim would (batched over models, through the engine's inner optimizer values), and the attack
metrics of :mod:`ddsec.attacks.metrics` are measured on the test split; the label-flip baselines
with the same image budget (class-``K`` images labelled ``T``, at the step size an attacker would
pick, :func:`~ddsec.attacks.baselines.select_flip_batch`) go through the same victims, so every
cell has its anchor. A victim's plan (clean draws, shifts) is drawn once per victim from the same
seed for the batch and each baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ddsec.attacks.metrics import AttackResult, attack_metrics
from ddsec.attacks.victims import Victim
from ddsec.data import ImageDataset
from ddsec.engine import InitDistribution, SyntheticSet, distinct_draws, population_forward, unroll
from ddsec.engine.population import Params
from ddsec.evaluate import population_predictions


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
    device = poison.images.device
    plan = victim.plan((poison.steps, poison.images.shape[1], poison.total_steps), clean, generator, device)
    return unroll(population_forward(model, "auto"), params, poison.detached(), optimizer=victim.inner_optimizer(),
                  plan=plan)


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
