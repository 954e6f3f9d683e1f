"""Dataset Condensation with Distribution Matching (DM).

Zhao and Bilen, "Dataset Condensation with Distribution Matching" (arXiv 2110.04181),
Algorithm 1: every iteration samples a fresh randomly initialised network (never trained) and,
for every class, matches the mean embedding (the features before the classifier) of a real
batch and of the synthetic images of that class, both passed through the same DSA
augmentation; the summed squared distances take one SGD step on the synthetic images.
"""

from __future__ import annotations

import torch

from ddsec.features import PENULTIMATE, features
from ddsec.condense.loop import ImageState, MatchingStep
from ddsec.condense.matching import embedding_distance
from ddsec.condense.problem import Matching
from ddsec.engine import select


def distribution_matching_step(matching: Matching) -> MatchingStep:
    """One DM iteration as a :data:`~ddsec.condense.loop.MatchingStep`; embeddings are the input of the model's last linear layer."""
    m = matching

    def step(state: ImageState, generator: torch.Generator, iteration: int) -> tuple[ImageState, float]:
        params = select(m.init.sample(1, generator), 0)
        images = state.images.detach().requires_grad_(True)
        loss = images.new_zeros(())
        for c in range(m.num_classes):
            real, syn = m.pair(images, c, generator, iteration)
            with torch.no_grad():
                real_embedding = features(m.model, params, real, PENULTIMATE)
            loss = loss + embedding_distance(real_embedding, features(m.model, params, syn, PENULTIMATE))
        (grad,) = torch.autograd.grad(loss, images)
        return m.optimizer(state, grad), float(loss.detach()) / m.num_classes

    return step
