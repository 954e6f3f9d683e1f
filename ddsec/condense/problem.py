"""What gradient matching and distribution matching share: one class's real and synthetic batch.

Both DC (Zhao et al., arXiv 2006.05929) and DM (Zhao and Bilen, arXiv 2110.04181) compare, class
by class, a real batch with the synthetic images of that class, both passed through the same
DSA augmentation when a strategy is set (arXiv 2102.08259), on a freshly initialised network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ddsec.condense.augment import dsa, random_seed
from ddsec.condense.loop import ImageSGD
from ddsec.condense.sampling import BatchSampler
from ddsec.engine import InitDistribution


@dataclass(frozen=True)
class Matching:
    """The setting of a matching method.

    Attributes:
        model: the architecture, used through ``functional_call``.
        init: draws the fresh network of each iteration.
        sampler: real batches per class.
        optimizer: the SGD step on the images.
        num_classes: ``K``.
        ipc: synthetic images per class; the images are ``[K·ipc, C, H, W]``, class-major.
        batch_real: real images per class per comparison.
        strategy: DSA operations shared by the real and the synthetic batch (empty: none).
    """

    model: nn.Module
    init: InitDistribution
    sampler: BatchSampler
    optimizer: ImageSGD
    num_classes: int
    ipc: int
    batch_real: int
    strategy: tuple[str, ...] = ()

    def pair(self, images: Tensor, label: int, generator: torch.Generator, iteration: int) -> tuple[Tensor, Tensor]:
        """A real batch ``[B, C, H, W]`` of class ``label`` and its synthetic images ``[ipc, C, H, W]``, augmented alike."""
        real = self.sampler.draw(label, self.batch_real, generator, iteration)
        syn = images[label * self.ipc : (label + 1) * self.ipc]
        if not self.strategy:
            return real, syn
        seed = random_seed(generator)
        return dsa(real, self.strategy, seed), dsa(syn, self.strategy, seed)
