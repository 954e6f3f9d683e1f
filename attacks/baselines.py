"""Label-flip baselines for the K→T attack: the same image budget, real-looking images.

Wang et al. (arXiv 1811.10959), §4.3 compare the distilled poisoning batch with the obvious
attack of the same size: training images of class ``K`` labelled ``T``. Three versions:

- ``flip-random``: random real training images of class ``K``;
- ``flip-average``: the mean class-``K`` training image in every slot;
- ``flip-kmeans``: k-means centroids of the class-``K`` training images.

Each is applied like the distilled batch (``S`` steps of ``N`` images, replayed ``E`` times), at
its best step size among the learned schedule and :data:`FLIP_LRS`. The step size is picked the
way an attacker could: on models of the *training* population and a subset of the training
split, by accuracy against the modified labels; the winner is then measured on the held-out
population and the test split, like the distilled batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ddsec.attacks.metrics import AttackResult, evaluate_attack
from ddsec.data import ImageDataset
from ddsec.data.summaries import kmeans
from ddsec.engine import InitDistribution, SyntheticSet
from ddsec.errors import DDSecError

FLIP_KINDS = ("flip-random", "flip-average", "flip-kmeans")
FLIP_LRS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
"""Constant step sizes tried (beyond the paper's 0.3: one step on a trained model needs larger ones)."""


@dataclass(frozen=True)
class FlipResult:
    """One baseline's held-out evaluation, its winning step size and the selection scores."""

    kind: str
    evaluation: AttackResult
    lr: float | str
    grid: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        """The attack summary plus the winning ``lr``."""
        return {**self.evaluation.summary(), "lr": self.lr}


def flip_images(kind: str, train: ImageDataset, attack: int, count: int, seed: int) -> Tensor:
    """``count`` class-``attack`` images for baseline ``kind``: float ``[count, C, H, W]``."""
    pool = train.images[train.labels == attack]
    if pool.shape[0] < count:
        raise DDSecError(f"class {attack} has {pool.shape[0]} training images, fewer than the {count} the baseline needs")
    if kind == "flip-random":
        return pool[torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(seed))[:count]]
    if kind == "flip-average":
        return pool.mean(0).expand(count, *pool.shape[1:]).clone()
    if kind == "flip-kmeans":
        return kmeans(pool.flatten(1), count, seed=seed)[0].view(count, *pool.shape[1:])
    raise DDSecError(f"unknown baseline {kind!r}; choose from {', '.join(FLIP_KINDS)}")


def select_flip_batch(
    kind: str,
    *,
    model: nn.Module,
    train_init: InitDistribution,
    train: ImageDataset,
    attack: int,
    target: int,
    shape: tuple[int, int],
    epochs: int,
    learned_lrs: Tensor | None,
    grid_models: int = 8,
    select_images: int = 2000,
    seed: int = 0,
) -> tuple[SyntheticSet, float | str, dict[str, float]]:
    """The baseline's batch at its best step size, picked on the training population as an attacker could.

    Args:
        shape: ``(S, N)``, the distilled batch's steps and images per step.
        learned_lrs: the distilled batch's step sizes ``[S·E]``, tried as one grid cell.
        grid_models: training-population models per grid cell.
        select_images: training images the grid is scored on.

    Returns:
        ``(batch, winning step size or "learned", accuracy w.r.t. the modified labels per cell)``.
    """
    steps, per_step = shape
    device = next(model.parameters()).device
    images = flip_images(kind, train, attack, steps * per_step, seed).view(steps, per_step, *train.image_shape)
    labels = torch.full((steps, per_step), target, dtype=torch.int64)
    cells: dict[str, Tensor] = {} if learned_lrs is None else {"learned": learned_lrs.detach().float().cpu()}
    cells.update({f"{lr:g}": torch.full((steps * epochs,), lr) for lr in FLIP_LRS})
    select = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:select_images])

    def synthetic(lrs: Tensor) -> SyntheticSet:
        return SyntheticSet.from_lrs(images.to(device), labels.to(device), lrs.to(device), epochs)

    grid = {name: evaluate_attack(model, train_init, synthetic(lrs), select, attack=attack, target=target,
                                 n_models=grid_models, seed=seed).after.mean()["acc_modified"] for name, lrs in cells.items()}
    best = max(grid, key=grid.__getitem__)
    return synthetic(cells[best]), best if best == "learned" else float(best), grid


def run_flip_baseline(
    kind: str,
    *,
    model: nn.Module,
    train_init: InitDistribution,
    heldout: InitDistribution,
    train: ImageDataset,
    test: ImageDataset,
    attack: int,
    target: int,
    shape: tuple[int, int],
    epochs: int,
    learned_lrs: Tensor | None,
    n_models: int,
    grid_models: int = 8,
    select_images: int = 2000,
    seed: int = 0,
) -> FlipResult:
    """Pick the baseline's step size on the training population (:func:`select_flip_batch`), then
    evaluate it on ``heldout``.

    Args:
        n_models: held-out models for the final evaluation; the others as :func:`select_flip_batch`.
    """
    batch, lr, grid = select_flip_batch(kind, model=model, train_init=train_init, train=train, attack=attack,
                                        target=target, shape=shape, epochs=epochs, learned_lrs=learned_lrs,
                                        grid_models=grid_models, select_images=select_images, seed=seed)
    evaluation = evaluate_attack(model, heldout, batch, test, attack=attack, target=target, n_models=n_models,
                                 seed=seed + 1)
    return FlipResult(kind, evaluation, lr, grid)
