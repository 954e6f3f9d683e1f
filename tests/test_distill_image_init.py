"""The starting images of ``ddsec distill`` (``--image-init``), on the embedded digits set."""

from __future__ import annotations

import pytest
import torch

from ddsec.distill import DistillConfig, initial_synthetic, prepare_distill
from ddsec.errors import DDSecError


def start(image_init: str):
    job = prepare_distill(DistillConfig(steps=3, epochs=1, image_init=image_init, device="cpu"))
    return job, initial_synthetic(job)


def test_average_puts_each_class_mean_in_every_step():
    job, synthetic = start("average")
    classes = job.train.num_classes
    assert synthetic.images.shape == (3, classes, *job.train.image_shape)
    for c in (0, classes - 1):
        mean = job.train.images[job.train.labels == c].mean(0)
        for s in range(3):
            torch.testing.assert_close(synthetic.images[s, c], mean)
    assert synthetic.images.is_contiguous()


def test_kmeans_gives_distinct_centroids_of_the_right_class():
    job, synthetic = start("kmeans")
    images, labels = job.train.images.flatten(1), job.train.labels
    class_means = torch.stack([images[labels == c].mean(0) for c in range(job.train.num_classes)])
    centroid_means = synthetic.images.flatten(2).mean(0)  # [classes, C·H·W]: each class's 3 centroids
    nearest = torch.cdist(centroid_means, class_means).argmin(1)
    assert torch.equal(nearest, synthetic.labels[0])
    assert not torch.allclose(synthetic.images[0], synthetic.images[1])


def test_unknown_image_init_is_a_user_error():
    with pytest.raises(DDSecError, match="--image-init must be one of real, noise, kmeans, average"):
        DistillConfig(image_init="zeros")
