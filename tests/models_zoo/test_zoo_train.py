"""Population training: batched = one model at a time, seeds fix everything, shards resume."""

from __future__ import annotations

import pytest
import torch

from ddsec.data import ImageDataset
from ddsec.errors import DDSecError
from ddsec.models_zoo import create_model, load_population, population_metadata
from ddsec.models_zoo.population import shard_name
from ddsec.models_zoo.train import TrainRecipe, default_steps, population_accuracy, train_group
from ddsec.models_zoo.zoo import (
    HELDOUT_SEED_OFFSET,
    list_populations,
    population_seeds,
    resolve_population,
    train_entry,
    train_population,
)

RECIPE = TrainRecipe(steps=30, batch_size=32, lr=0.01)


def blobs(n: int = 240, seed: int = 0) -> ImageDataset:
    """Three well-separated classes of 1×4×4 'images'."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centers = torch.randn(3, 1, 4, 4, generator=gen) * 2
    images = centers[labels] + 0.5 * torch.randn(n, 1, 4, 4, generator=gen)
    return ImageDataset("blobs", images.float(), labels, 3, ("a", "b", "c"), (0.0,), (1.0,))


def mlp():
    return create_model("test_mlp", num_classes=3, in_chans=1, image_size=4)


def test_group_training_learns_and_matches_one_at_a_time():
    data = blobs()
    together = train_group(mlp(), data, [3, 4], RECIPE)
    alone = [train_group(mlp(), data, [s], RECIPE) for s in (3, 4)]
    for k, v in together.items():
        assert torch.allclose(v[0], alone[0][k][0], atol=1e-6) and torch.allclose(v[1], alone[1][k][0], atol=1e-6)
    assert not torch.equal(together["1.weight"][0], together["1.weight"][1])
    assert population_accuracy(mlp(), together, blobs(seed=0)).min() > 0.9


def test_vmap_and_loop_batching_agree():
    data = blobs()
    looped = train_group(mlp(), data, [1, 2], RECIPE, batching="loop")
    mapped = train_group(mlp(), data, [1, 2], RECIPE, batching="vmap")
    assert all(torch.allclose(looped[k], mapped[k], atol=1e-5) for k in looped)


def test_recipe_validation_and_default_steps():
    with pytest.raises(DDSecError, match="--steps"):
        TrainRecipe(steps=0)
    assert default_steps(1347, 128) == 106 and default_steps(60000, 128) == 300
    assert TrainRecipe().for_dataset(1347).steps == 106


def test_heldout_seeds_are_disjoint():
    train, heldout = population_seeds("train", 500, seed=3), population_seeds("heldout", 50, seed=3)
    assert not set(train) & set(heldout) and heldout[0] == HELDOUT_SEED_OFFSET + 3


def test_population_shards_resume_and_refuse_another_population(tmp_path, monkeypatch):
    data, folder = blobs(), tmp_path / "pop"
    kwargs = dict(model=mlp(), model_name="test_mlp", train=data, test=data, recipe=RECIPE, group=2)
    meta = train_population(folder, seeds=[0, 1, 2], **kwargs)
    assert meta["count"] == 3 and meta["shards"] == 2 and meta["seeds"] == [0, 1, 2]
    assert meta["recipe"]["steps"] == 30 and len(meta["test_acc"]) == 3
    first = load_population(folder)

    # A killed run: the last shard is missing. Rerunning trains only that shard, identically.
    (folder / shard_name(1)).unlink()
    with pytest.raises(DDSecError, match="unfinished .2 of 3 models"):
        load_population(folder)
    calls = []
    import ddsec.models_zoo.zoo as zoo

    original = zoo.train_group
    monkeypatch.setattr(zoo, "train_group", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    train_population(folder, seeds=[0, 1, 2], **kwargs)
    assert calls == [[2]]
    assert all(torch.equal(first[k], v) for k, v in load_population(folder).items())

    with pytest.raises(DDSecError, match="other seeds, recipe"):
        train_population(folder, seeds=[5, 6, 7], **kwargs)
    with pytest.raises(DDSecError, match="different population"):
        train_population(folder, seeds=[0], **kwargs | {"group": 1})


def test_entry_list_and_resolve(tmp_path):
    metas = train_entry("tiny", dataset="digits", model_name="test_mlp", count=2, heldout=1, root=tmp_path,
                        recipe=TrainRecipe(steps=3), image_size=8)
    assert metas["train"]["count"] == 2 and metas["heldout"]["seeds"] == [HELDOUT_SEED_OFFSET]
    rows = list_populations(tmp_path)
    assert [(r["name"], r["role"], r["count"]) for r in rows] == [("tiny", "train", 2), ("tiny", "heldout", 1)]
    assert resolve_population("tiny", "heldout", tmp_path) == tmp_path / "tiny" / "heldout"
    assert resolve_population(tmp_path / "tiny", "train") == tmp_path / "tiny" / "train"
    assert population_metadata(tmp_path / "tiny" / "train")["image_size"] == 8
    with pytest.raises(DDSecError, match="no population 'nope'"):
        resolve_population("nope", "train", tmp_path)
