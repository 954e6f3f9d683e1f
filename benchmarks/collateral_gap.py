"""Where the training check's collateral and the held-out models' part ways, for exported poison batches.

    DDSEC_DATA=../shared/data python benchmarks/collateral_gap.py long4/mnist-4-9.safetensors …

For each batch, one markdown table: the drop of accuracy on the other classes (points) and the
attack success (%) after the batch's own victim, for four sets of models (the check's M, 48 of
MNIST's 200; M of the crafting models; M and all 50 held-out ones) on three sets of images (the
check's 1,000 training images, 1,000 other training images, the test split). The check row on
the check images is what the collateral budget held; the 50 held-out models on the test split is
what `ddsec poison` reports. Then, as controls that nothing selected on the check: the same batch
at half and twice its step sizes, and two label-flip batches (10 random class-K training images
labelled T, one step of 0.003), on the check's models, the held-out ones and M other
training-population models (crafting models: a fair comparison for the label flips only), on
the test split.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ddsec.attacks.baselines import flip_images
from ddsec.attacks.collateral import hold_out
from ddsec.attacks.metrics import evaluate_attack
from ddsec.attacks.poison import PoisonConfig, prepare_from_file
from ddsec.data import ImageDataset
from ddsec.distill import DistillJob
from ddsec.engine import InitDistribution, PopulationInit, SyntheticSet
from ddsec.engine.population import select

FLIP_STEP = 0.003
"""The label-flip controls' step size: about one point of collateral on MNIST LeNets."""


def models_of(init: PopulationInit, start: int, count: int) -> PopulationInit:
    """Models ``start … start + count − 1`` of ``init`` (fewer where the population is smaller)."""
    return PopulationInit(select(init.population, torch.arange(start, min(start + count, init.size))))


def print_row(name: str, cells: list[tuple[float, float]]) -> None:
    """One markdown row of ``(collateral, attack success)`` cells."""
    print(f"| {name} | " + " | ".join(f"{c:.2f} / {a:.1f} %" for c, a in cells) + " |")


def drop(model: nn.Module, init: InitDistribution, batch: SyntheticSet, data: ImageDataset,
         cfg: PoisonConfig) -> tuple[float, float]:
    """(collateral in points, attack success in %) of ``batch`` on every model of ``init``."""
    result = evaluate_attack(model, init, batch, data, attack=cfg.attack, target=cfg.target, n_models=init.size,
                             seed=cfg.seed + 11).summary()
    return 100 * (result["acc_other_before"] - result["acc_other_after"]), 100 * result["asr_mean"]


def controls(base: DistillJob, cfg: PoisonConfig, batch: SyntheticSet, check_init: InitDistribution,
             others: InitDistribution) -> None:
    """The check's models against the held-out ones and ``others`` (training-population models the
    check never used; crafting models, so a fair comparison for the label flips only) on batches no
    check selected."""
    shape = (1, 10, *base.train.image_shape)
    unselected = {f"the batch, step × {scale}": SyntheticSet.from_lrs(batch.images, batch.labels,
                                                                      batch.lrs() * scale, batch.epochs)
                  for scale in (0.5, 2)}
    for seed in (0, 1):
        images = flip_images("flip-random", base.train, cfg.attack, 10, seed=seed).view(shape)
        unselected[f"label-flip, seed {seed}"] = SyntheticSet.from_lrs(
            images, torch.full(shape[:2], cfg.target), torch.tensor([FLIP_STEP]), 1)
    print("\n| control (test split) | the check's models | held-out models | other training-population models |"
          "\n|---|---|---|---|")
    for name, control in unselected.items():
        cells = [drop(base.model, init, control, base.test, cfg) for init in (check_init, base.heldout, others)]
        print_row(name, cells)


def main(paths: list[str]) -> None:
    for path in paths:
        dset, job = prepare_from_file(path)
        base, cfg = job.base, job.cfg
        batch = SyntheticSet.from_lrs(dset.images, dset.labels, dset.lrs, dset.meta.epochs)
        craft_init, craft_images, check_init, check_images = hold_out(base.init, base.train, seed=cfg.seed + 11)
        other_images = craft_images.subset(
            torch.randperm(len(craft_images), generator=torch.Generator().manual_seed(5))[:len(check_images)])
        count = check_init.size
        crafting, held = models_of(craft_init, 0, count), models_of(base.heldout, 0, count)
        models = {f"the check's ({count})": check_init, f"crafting (first {crafting.size})": crafting,
                  f"held-out (first {held.size})": held, f"held-out (all {base.heldout.size})": base.heldout}
        images = {"check images": check_images, "other training images": other_images, "test split": base.test}
        print(f"\n{path}: {cfg.attack} → {cfg.target}; the check recorded at crafting: "
              f"{100 * dset.meta.config['crafting']['train_collateral']:.2f} points\n")
        print("| models | " + " | ".join(images) + " |\n" + "|---" * (len(images) + 1) + "|")
        for name, init in models.items():
            cells = [drop(base.model, init, batch, data, cfg) for data in images.values()]
            print_row(name, cells)
        controls(base, cfg, batch, check_init, models_of(craft_init, count, count))


if __name__ == "__main__":
    main(sys.argv[1:])
