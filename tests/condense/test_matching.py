"""Matching distances and the samplers: zero for identical gradients, cluster batches stay in one cluster."""

from __future__ import annotations

import pytest
import torch

from ddsec.features import features, layer_names
from ddsec.condense.matching import embedding_distance, gradient_distance
from ddsec.condense.sampling import ClusterBatches, RandomBatches, cached_clusters, kmeans_clusters
from ddsec.errors import DDSecError


def grads(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g), torch.randn(5, 16, generator=g)]


def test_gradient_distance_is_zero_for_identical_gradients():
    a = grads(0)
    assert float(gradient_distance(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(gradient_distance(a, [2.5 * t for t in a])) == pytest.approx(0.0, abs=1e-6)  # scale-free


def test_gradient_distance_sums_one_minus_cosine_over_output_units():
    a, b = grads(0), grads(1)
    expected = sum((1 - torch.nn.functional.cosine_similarity(x.flatten(1), y.flatten(1), dim=1)).sum()
                   for x, y in zip(a, b) if x.dim() > 1)  # biases (1-d) are left out
    assert float(gradient_distance(a, b)) == pytest.approx(float(expected), rel=1e-5)
    opposite = float(gradient_distance(a, [-t for t in a]))
    assert opposite == pytest.approx(2.0 * (4 + 5), rel=1e-5)  # cos = -1 on each of the 9 units


def test_embedding_distance():
    real = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    assert float(embedding_distance(real, torch.tensor([[2.0, 1.0]]))) == 0.0
    assert float(embedding_distance(real, torch.tensor([[0.0, 1.0]]))) == pytest.approx(4.0)


def test_features_of_a_layer_and_unknown_layers(tiny_cnn):
    params = dict(tiny_cnn.named_parameters())
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    assert features(tiny_cnn, params, x, "0").shape == (5, 4)  # conv output pooled over space
    assert features(tiny_cnn, params, x, "penultimate").shape == (5, 16)
    assert "penultimate" in layer_names(tiny_cnn)
    with pytest.raises(DDSecError, match="unknown --feature-layer 'conv9'"):
        features(tiny_cnn, params, x, "conv9")


def test_cluster_batches_come_from_one_cluster_and_mix_later(tmp_path):
    labels = torch.tensor([0] * 6 + [1] * 6)
    images = torch.arange(12, dtype=torch.float32).view(12, 1, 1, 1)
    feats = torch.tensor([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]] * 2)
    clusters = kmeans_clusters(feats, labels, 2, 2, seed=0)
    sampler = ClusterBatches(images, labels, clusters, 2, mix_after=5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        drawn = sampler.draw(1, 10, generator, iteration=0).flatten().long()
        assert len(drawn) == 3 and len(set(clusters[drawn].tolist())) == 1 and (labels[drawn] == 1).all()
    sizes = {len(sampler.draw(0, 10, generator, iteration=5)) for _ in range(30)}
    assert sizes == {3, 6}  # after mix_after: cluster batches and whole-class random batches
    assert len(RandomBatches(images, labels, 2).draw(0, 4, generator, 0)) == 4

    path = tmp_path / "c.safetensors"
    calls = []
    compute = lambda: calls.append(1) or clusters  # noqa: E731
    first, hit = cached_clusters(path, {"k": 2}, compute)
    again, hit_again = cached_clusters(path, {"k": 2}, compute)
    other, hit_other = cached_clusters(path, {"k": 3}, compute)
    assert (hit, hit_again, hit_other) == (False, True, False) and len(calls) == 2
    assert torch.equal(first, again)
