"""Dataset Condensation with Distribution Matching (DM).

Zhao and Bilen, "Dataset Condensation with Distribution Matching" (arXiv 2110.04181),
Algorithm 1: every iteration samples a fresh randomly initialised network (never trained) and,
for every class, matches the mean embedding (the features before the classifier) of a real
batch and of the synthetic images of that class, both passed through the same DSA
augmentation; the summed squared distances take one SGD step on the synthetic images.
"""

from __future__ import annotations

import torch
from torch import nn

from ddsec.condense.augment import dsa, random_seed
from ddsec.condense.checkpoint import ImageState
from ddsec.condense.features import PENULTIMATE, features
from ddsec.condense.loop import ImageSGD, Step
from ddsec.condense.matching import embedding_distance
from ddsec.condense.sampling import BatchSampler
from ddsec.engine import InitDistribution, select


def distribution_matching_step(
    model: nn.Module,
    init: InitDistribution,
    sampler: BatchSampler,
    optimizer: ImageSGD,
    *,
    num_classes: int,
    ipc: int,
    batch_real: int,
    strategy: tuple[str, ...] = (),
) -> Step:
    """One DM iteration as a :data:`~ddsec.condense.loop.Step`.

    Args:
        model: the architecture, used through ``functional_call``; embeddings are the input
            of its last linear layer.
        init: draws the fresh network of each iteration.
        sampler: real batches per class.
        optimizer: the SGD step on the images.
        num_classes, ipc: the synthetic layout (``[num_classes·ipc, C, H, W]``, class-major).
        batch_real: real images per class.
        strategy: DSA operations shared by the real and synthetic batch (empty: none).
    """

    def step(state: ImageState, generator: torch.Generator, iteration: int) -> tuple[ImageState, float]:
        params = select(init.sample(1, generator), 0)
        images = state.images.detach().requires_grad_(True)
        loss = images.new_zeros(())
        for c in range(num_classes):
            real = sampler.draw(c, batch_real, generator, iteration)
            syn = images[c * ipc : (c + 1) * ipc]
            if strategy:
                seed = random_seed(generator)
                real, syn = dsa(real, strategy, seed), dsa(syn, strategy, seed)
            with torch.no_grad():
                real_embedding = features(model, params, real, PENULTIMATE)
            loss = loss + embedding_distance(real_embedding, features(model, params, syn, PENULTIMATE))
        (grad,) = torch.autograd.grad(loss, images)
        return optimizer(state, grad), float(loss.detach()) / num_classes

    return step
