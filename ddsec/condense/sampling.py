"""Real batches for matching: one class at a time, uniformly or from one feature cluster.

Gradient matching (Zhao et al., arXiv 2006.05929) and distribution matching (arXiv 2110.04181)
compare a synthetic class with a random real batch of the same class. *Batch sampling* instead
builds each real batch from one k-means cluster of that class, the clusters computed once on
pooled features of a chosen layer of a pretrained network, so every matching step sees similar
images; after ``mix_after`` iterations each batch is a cluster batch or a plain random batch
with even odds. Cluster assignments are cached in a safetensors file keyed by everything that
determines them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddsec._io import atomic_path
from ddsec.data.summaries import kmeans


class BatchSampler(Protocol):
    """Draws real images of one class."""

    def draw(self, label: int, n: int, generator: torch.Generator, iteration: int) -> Tensor:
        """Up to ``n`` real images ``[n, C, H, W]`` of class ``label`` for outer iteration ``iteration``."""
        ...


def _take(images: Tensor, index: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Up to ``n`` of ``images[index]``, without replacement, in random order."""
    pick = index[torch.randperm(index.numel(), generator=generator)[:n]]
    return images[pick.to(images.device)]


class RandomBatches:
    """Uniform real batches of one class.

    Args:
        images: float ``[M, C, H, W]``.
        labels: int64 ``[M]``.
        num_classes: ``K``.
    """

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int) -> None:
        self.images = images
        self.by_class = [(labels.cpu() == c).nonzero().flatten() for c in range(num_classes)]

    def draw(self, label: int, n: int, generator: torch.Generator, iteration: int) -> Tensor:
        """See :class:`BatchSampler`."""
        return _take(self.images, self.by_class[label], n, generator)


class ClusterBatches:
    """Real batches drawn from one random k-means cluster of the class.

    Args:
        images: float ``[M, C, H, W]``.
        labels: int64 ``[M]``.
        clusters: int64 ``[M]``, each image's cluster within its class.
        num_classes: ``K``.
        mix_after: from this outer iteration on, half the batches (at random) are plain random
            batches of the class; ``None``: never.
    """

    def __init__(self, images: Tensor, labels: Tensor, clusters: Tensor, num_classes: int,
                 mix_after: int | None = None) -> None:
        self.random = RandomBatches(images, labels, num_classes)
        labels, clusters = labels.cpu(), clusters.cpu()
        self.groups = [[(labels == c).logical_and(clusters == k).nonzero().flatten()
                        for k in clusters[labels == c].unique()] for c in range(num_classes)]
        self.mix_after = mix_after

    def draw(self, label: int, n: int, generator: torch.Generator, iteration: int) -> Tensor:
        """See :class:`BatchSampler`."""
        plain = bool(torch.rand(1, generator=generator) < 0.5)
        if self.mix_after is not None and iteration >= self.mix_after and plain:
            return self.random.draw(label, n, generator, iteration)
        groups = self.groups[label]
        group = groups[int(torch.randint(len(groups), (1,), generator=generator))]
        return _take(self.random.images, group, n, generator)


def kmeans_clusters(features: Tensor, labels: Tensor, num_classes: int, clusters: int, seed: int) -> Tensor:
    """Cluster each class's feature vectors with k-means: int64 ``[M]`` cluster ids within the class.

    Args:
        features: float ``[M, D]``.
        labels: int64 ``[M]``.
        clusters: ``k`` per class (capped at the class size).
        seed: k-means' ``random_state``.
    """
    assignment = torch.zeros(labels.shape[0], dtype=torch.int64)
    for c in range(num_classes):
        index = (labels == c).nonzero().flatten()
        if index.numel() == 0:
            continue
        assignment[index] = kmeans(features[index], min(clusters, index.numel()), seed=seed)[1]
    return assignment


def cached_clusters(path: Path, key: dict, compute: Callable[[], Tensor]) -> tuple[Tensor, bool]:
    """The assignment stored at ``path`` for ``key``, else ``compute()`` written there atomically.

    Returns:
        The int64 ``[M]`` assignment and whether it came from the cache.
    """
    stamp = json.dumps(key, sort_keys=True)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as handle:
                same = (handle.metadata() or {}).get("key") == stamp
            if same:
                return load_file(str(path))["clusters"], True
        except (SafetensorError, OSError, KeyError):
            pass  # unreadable or foreign: recompute and replace it
    assignment = compute()
    with atomic_path(path) as tmp:
        save_file({"clusters": assignment.contiguous()}, str(tmp), metadata={"key": stamp})
    return assignment, False
