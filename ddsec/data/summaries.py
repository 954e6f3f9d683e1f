"""Images taken or summarised per class from a dataset, laid out like a synthetic set.

A distilled set starts from them (``--image-init real|kmeans|average``) and the paper's Table 1
baselines are made of them (:mod:`ddsec.baselines`); :func:`kmeans` is the one k-means of the
project (the baselines' centroids, the label-flip ``flip-kmeans`` batch, condense's clusters).
A synthetic layout is float ``[S, classes·ipc, C, H, W]``, class-major within each step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ddsec.data.dataset import ImageDataset
from ddsec.errors import DDSecError


def kmeans(points: Tensor, k: int, *, seed: int, n_init: int = 3) -> tuple[Tensor, Tensor]:
    """scikit-learn's k-means (in float64) of ``points`` float ``[M, D]``: the centroids float32
    ``[k, D]`` and each point's cluster int64 ``[M]``."""
    from sklearn.cluster import KMeans  # heavy import, only needed here

    fit = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(points.double().cpu().numpy())
    return torch.from_numpy(fit.cluster_centers_).float(), torch.from_numpy(fit.labels_).long()


def class_index(data: ImageDataset, c: int, need: int) -> Tensor:
    """Indices ``[n]`` of class ``c``'s training images; at least ``need`` of them."""
    index = (data.labels == c).nonzero().flatten()
    if index.numel() < need:
        raise DDSecError(f"class {c} of {data.name} has {index.numel()} training images, fewer than"
                         f" steps × ipc = {need}; lower --steps or --ipc, or use --image-init noise")
    return index


def layout(per_class: Sequence[Tensor], steps: int, ipc: int) -> Tensor:
    """Per-class stacks ``[S·ipc, C, H, W]`` → a synthetic layout ``[S, classes·ipc, C, H, W]``, class-major."""
    return torch.cat([x.reshape(steps, ipc, *x.shape[1:]) for x in per_class], dim=1)


def real_images_per_class(data: ImageDataset, ipc: int, steps: int, generator: torch.Generator) -> Tensor:
    """Random real images laid out like a synthetic set: float ``[S, classes·ipc, C, H, W]``, class-major.

    Raises:
        DDSecError: a class has fewer than ``ipc·steps`` training images.
    """
    per_class = []
    for c in range(data.num_classes):
        index = class_index(data, c, ipc * steps)
        per_class.append(data.images[index[torch.randperm(index.numel(), generator=generator)[: ipc * steps]]])
    return layout(per_class, steps, ipc)


def kmeans_images(data: ImageDataset, ipc: int, steps: int, *, seed: int, n_init: int = 3) -> Tensor:
    """Per class, the k-means centroids (``k = ipc·S``) of its flattened normalised training images.

    Returns:
        float32 ``[S, classes·ipc, C, H, W]``, class-major; centroids in k-means' own order.
    """
    per_class = []
    for c in range(data.num_classes):
        centers, _ = kmeans(data.images[class_index(data, c, ipc * steps)].flatten(1), ipc * steps, seed=seed,
                            n_init=n_init)
        per_class.append(centers.view(-1, *data.image_shape))
    return layout(per_class, steps, ipc)


def average_images(data: ImageDataset, ipc: int, steps: int) -> Tensor:
    """Per class, the mean training image in all ``ipc`` slots of every step: ``[S, classes·ipc, C, H, W]``."""
    per_class = [data.images[class_index(data, c, 1)].mean(0).expand(ipc * steps, *data.image_shape)
                 for c in range(data.num_classes)]
    return layout(per_class, steps, ipc)
