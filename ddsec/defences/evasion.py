"""The adaptive attacker: differentiable penalties that keep a poisoning batch inside the clean
data's distribution for the scores a defender computes (``ddsec poison --evade``).

Each penalty is measured under the sampled ``θ0`` (the models a defender would screen with)
against a fixed clean reference set: every batch image's statistic is compared with a high
quantile of the same statistic over the clean reference images (a low quantile for the
gradient cosine), and only the excess is penalised, squared and relative to that quantile:

- ``loss``: the per-sample loss; ``gradient-norm``: the per-sample gradient norm;
- ``gradient-alignment``: the cosine with the class's mean unit gradient of the clean reference;
- ``spectral``, ``activation-clustering``, ``knn``: the distance of the image's penultimate
  features from its class's clean mean (an image that sits among its class's clean features
  leaves no spectral direction, no separate cluster and no foreign neighbours).

The penalty is averaged over the batch images and the sampled models and multiplied by ``weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ddsec.engine.population import Params, population_size, select
from ddsec.errors import DDSecError
from ddsec.features import PENULTIMATE, feature_module

FEATURE_SCORES = ("spectral", "activation-clustering", "knn")
EVADABLE = ("loss", "gradient-norm", "gradient-alignment", *FEATURE_SCORES)


def parse_evade(value: str | None) -> tuple[str, ...]:
    """Detector names from ``"gradient-norm,spectral"`` (empty for ``None`` or ``""``).

    Raises:
        DDSecError: an unknown or non-evadable name.
    """
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip())
    for name in names:
        if name == "pixels":
            raise DDSecError("--evade pixels: the pixel checks are met by construction with --pixels valid"
                             " --quantize 8bit")
        if name not in EVADABLE:
            raise DDSecError(f"--evade {name!r}: choose from {', '.join(EVADABLE)} (comma-separated)")
    return names


class EvasionPenalty:
    """``penalty(params [M, …], images [S, N, C, H, W], labels [S, N]) -> scalar``, differentiable in ``images``.

    Args:
        model: the architecture (eval mode).
        names: detector names from :data:`EVADABLE`.
        reference: clean images ``[R, C, H, W]`` and labels ``[R]`` (the defender's normal data).
        weight: multiplies the penalty.
        quantile: the clean quantile an image must stay within.
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...], reference: tuple[Tensor, Tensor], *,
                 weight: float = 1.0, quantile: float = 0.9) -> None:
        if not names:
            raise ValueError("an evasion penalty needs at least one detector name")
        self.model, self.names, self.weight, self.quantile = model, names, weight, quantile
        self.reference = reference
        self.head, _ = feature_module(model, PENULTIMATE)

    def _loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(self.model, params, (x.unsqueeze(0),)), y.unsqueeze(0))

    def _features(self, params: Params, x: Tensor) -> Tensor:
        captured: list[Tensor] = []
        hook = self.head.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0]))
        try:
            logits = functional_call(self.model, params, (x,))
        finally:
            hook.remove()
        return captured[-1].flatten(1), logits

    def _one_model(self, params: Params, images: Tensor, labels: Tensor) -> Tensor:
        x_ref, y_ref = self.reference
        per_sample = vmap(grad(self._loss), in_dims=(None, 0, 0))
        terms = []
        with torch.no_grad():
            ref_features, ref_logits = self._features(params, x_ref)
            ref_grads = _flat(per_sample(params, x_ref, y_ref))
        features, logits = self._features(params, images)
        if "loss" in self.names:
            clean = F.cross_entropy(ref_logits, y_ref, reduction="none").quantile(self.quantile)
            terms.append(_excess(F.cross_entropy(logits, labels, reduction="none"), clean))
        if {"gradient-norm", "gradient-alignment"} & set(self.names):
            grads = _flat(per_sample(params, images, labels))
            norms, ref_norms = grads.norm(dim=1), ref_grads.norm(dim=1)
            if "gradient-norm" in self.names:
                terms.append(_excess(norms, ref_norms.quantile(self.quantile)))
            if "gradient-alignment" in self.names:
                classes = int(ref_logits.shape[-1])
                unit = ref_grads / ref_norms.clamp_min(1e-30).unsqueeze(1)
                directions = torch.zeros(classes, unit.shape[1], dtype=unit.dtype, device=unit.device).index_add_(0, y_ref, unit)
                ref_cos = F.cosine_similarity(ref_grads, directions[y_ref], dim=1)
                floor = ref_cos.quantile(1 - self.quantile)
                terms.append(_excess(1 - F.cosine_similarity(grads, directions[labels], dim=1), 1 - floor))
        if set(FEATURE_SCORES) & set(self.names):
            centres = torch.stack([ref_features[y_ref == c].mean(0) for c in range(int(ref_logits.shape[-1]))])
            ref_distance = (ref_features - centres[y_ref]).norm(dim=1)
            radius = torch.stack([ref_distance[y_ref == c].quantile(self.quantile) for c in range(len(centres))])
            terms.append(_excess((features - centres[labels]).norm(dim=1) / radius[labels], torch.tensor(1.0)))
        return sum(terms)

    def __call__(self, params: Params, images: Tensor, labels: Tensor) -> Tensor:
        if labels.ndim == 3:
            labels = labels.argmax(-1)
        flat_images, flat_labels = images.flatten(0, 1), labels.flatten()
        models = population_size(params)
        total = sum(self._one_model(select(params, m), flat_images, flat_labels) for m in range(models))
        return self.weight * total / models


def _flat(grads: dict[str, Tensor]) -> Tensor:
    """Per-sample gradients ``{name: [B, …]}`` as one ``[B, |θ|]`` matrix."""
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


def _excess(values: Tensor, limit: Tensor) -> Tensor:
    """Mean of ``relu(values / limit − 1)²``: zero while every value stays within the clean limit."""
    return (F.relu(values / limit.clamp_min(1e-12) - 1) ** 2).mean()


def reference_set(images: Tensor, labels: Tensor, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``size`` clean images ``[R, C, H, W]`` and labels ``[R]`` drawn with every class present.

    Raises:
        DDSecError: the training data lacks a class.
    """
    classes = int(labels.max()) + 1
    per_class = max(size // classes, 2)
    picks = []
    for c in range(classes):
        members = (labels == c).nonzero().flatten()
        if len(members) < 2:
            raise DDSecError(f"--evade needs at least two training images of every class; class {c} has {len(members)}")
        picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    index = torch.cat(picks)
    return images[index], labels[index]
