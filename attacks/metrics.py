"""How well a K→T poisoning batch works, measured on held-out models.

Wang et al. (arXiv 1811.10959), §3.4: after the victim's gradient step(s) on the distilled batch,
images of the attacked class ``K`` should be predicted as the target class ``T`` while every
other class stays right. Reported per model, then as mean ± std over the held-out population
(and, for the attack success, the mean over the worst tenth of models):

- ``asr`` (attack success rate): fraction of class-``K`` test images predicted ``T``;
- ``acc_modified``: accuracy against the modified labels (every ``K`` relabelled ``T``), the
  paper's figure;
- ``acc_other``: accuracy on the test images of the classes other than ``K``;
- ``acc_clean``: plain accuracy on all test images (backdoor toolkits report this "clean
  accuracy" next to the attack success rate);
- per true class: accuracy and the fraction predicted ``T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsec.data import ImageDataset
from ddsec.engine import InitDistribution, SyntheticSet, distinct_draws
from ddsec.evaluate import trained_predictions


def relabel(labels: Tensor, attack: int, target: int) -> Tensor:
    """``labels`` (int64, any shape) with every ``attack`` replaced by ``target``."""
    return torch.where(labels == attack, torch.full_like(labels, target), labels)


def weighted_relabel(labels: Tensor, attack: int, target: int, num_classes: int, weight: float) -> Tensor:
    """One-hot targets float ``[B, K]`` of ``relabel(labels)``, the rows of class-``attack`` images scaled
    by ``weight``: cross-entropy against them weighs those images ``weight`` times the others."""
    scale = torch.where(labels == attack, weight, 1.0).unsqueeze(-1)
    return F.one_hot(relabel(labels, attack, target), num_classes).float() * scale


@dataclass(frozen=True)
class AttackMetrics:
    """Per-model attack metrics of ``M`` models; every entry a fraction in [0, 1].

    Attributes:
        asr, acc_modified, acc_other, acc_clean: float ``[M]``.
        per_class_acc: float ``[M, K]`` accuracy on each true class.
        per_class_to_target: float ``[M, K]`` share of each true class predicted as the target.
    """

    asr: Tensor
    acc_modified: Tensor
    acc_other: Tensor
    acc_clean: Tensor
    per_class_acc: Tensor
    per_class_to_target: Tensor

    def mean(self) -> dict[str, float]:
        """Means over models of the four headline metrics."""
        return {k: float(getattr(self, k).mean()) for k in ("asr", "acc_modified", "acc_other", "acc_clean")}

    def std(self, name: str) -> float:
        """Standard deviation over models of one headline metric (0 for one model)."""
        values = getattr(self, name)
        return float(values.std()) if values.numel() > 1 else 0.0

    def worst_decile(self, name: str) -> float:
        """Mean of one headline metric over its worst tenth of models (at least one model): how the
        attack fares on the victims it reaches least."""
        values = getattr(self, name)
        return float(values.sort().values[: math.ceil(values.numel() / 10)].mean())


def attack_metrics(predictions: Tensor, labels: Tensor, attack: int, target: int, num_classes: int) -> AttackMetrics:
    """Attack metrics from the predictions of ``M`` models.

    Args:
        predictions: int64 ``[M, N]`` predicted classes on the test images.
        labels: int64 ``[N]`` true test labels; must contain class ``attack``.
        attack, target: ``K`` and ``T``.
        num_classes: number of classes.
    """
    labels = labels.to(predictions.device)
    if not bool((labels == attack).any()):
        raise ValueError(f"the test labels hold no image of the attacked class {attack}")
    correct = (predictions == labels).float()
    is_attack = labels == attack
    to_target = (predictions == target).float()
    per_class_acc = torch.zeros(predictions.shape[0], num_classes)
    per_class_to_target = torch.zeros(predictions.shape[0], num_classes)
    for c in range(num_classes):
        members = labels == c
        if members.any():
            per_class_acc[:, c] = correct[:, members].mean(1).cpu()
            per_class_to_target[:, c] = to_target[:, members].mean(1).cpu()
    return AttackMetrics(
        asr=to_target[:, is_attack].mean(1).cpu(),
        acc_modified=(predictions == relabel(labels, attack, target)).float().mean(1).cpu(),
        acc_other=correct[:, ~is_attack].mean(1).cpu(),
        acc_clean=correct.mean(1).cpu(),
        per_class_acc=per_class_acc,
        per_class_to_target=per_class_to_target,
    )


@dataclass(frozen=True)
class AttackResult:
    """Metrics before and after the victim's step(s) on one batch, over the same models."""

    before: AttackMetrics
    after: AttackMetrics

    @property
    def models(self) -> int:
        """Number of held-out models."""
        return self.after.asr.shape[0]

    def summary(self) -> dict[str, float | int]:
        """Flat numbers for tables and ``--json`` (fractions in [0, 1])."""
        after, before = self.after.mean(), self.before.mean()
        return {
            "models": self.models,
            "asr_mean": after["asr"], "asr_std": self.after.std("asr"), "asr_before": before["asr"],
            "asr_worst_decile": self.after.worst_decile("asr"),
            "acc_modified_mean": after["acc_modified"], "acc_modified_std": self.after.std("acc_modified"),
            "acc_modified_before": before["acc_modified"],
            "acc_other_before": before["acc_other"], "acc_other_after": after["acc_other"],
            "acc_clean_before": before["acc_clean"], "acc_clean_after": after["acc_clean"],
        }


def evaluate_attack(
    model: nn.Module, init: InitDistribution, synthetic: SyntheticSet, test: ImageDataset, *,
    attack: int, target: int, n_models: int, seed: int,
) -> AttackResult:
    """Attack metrics of up to ``n_models`` models from ``init`` (all of a smaller population),
    before and after the steps of ``synthetic``, on ``test``; the draws are seeded by ``seed``."""
    size = getattr(init, "size", n_models)
    predictions = trained_predictions(model, init, synthetic, test.images, generator=torch.Generator().manual_seed(seed),
                                      n_models=distinct_draws(init, min(n_models, size)))
    return AttackResult(*(attack_metrics(p, test.labels, attack, target, test.num_classes) for p in predictions))
