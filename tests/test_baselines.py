"""Table 1 baselines on the embedded digits with a tiny model and a tiny grid."""

from __future__ import annotations

import pytest
import torch

from ddsec.baselines import BASELINES, check_kinds, run_baseline
from ddsec.data import load_dataset
from ddsec.data.summaries import average_images, kmeans_images, real_images_per_class
from ddsec.distill import build_model
from ddsec.engine import FixedInit, RandomInit, class_major_labels
from ddsec.errors import DDSecError

STEPS, EPOCHS, IPC = 2, 1, 1
TINY = dict(steps=STEPS, epochs=EPOCHS, ipc=IPC, lrs=(0.01, 0.1), epochs_grid=(1,), grid_models=2,
            candidates=5, kmeans_n_init=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train=True), load_dataset("digits", train=False)


@pytest.fixture(scope="module")
def model(digits):
    return build_model("test_mlp", digits[0])


def run(kind, digits, model, heldout=None, **kwargs):
    train, test = digits
    return run_baseline(kind, model=model, heldout=heldout or RandomInit(model), train=train, test=test,
                        **{**TINY, **kwargs})


@pytest.mark.parametrize("kind", BASELINES)
def test_every_kind_gives_accuracies_for_the_requested_models(kind, digits, model):
    stages = []
    result = run(kind, digits, model, n_models=3, learned_lrs=torch.full((STEPS * EPOCHS,), 0.05),
                 on_progress=lambda stage, done, total: stages.append((stage, done, total)))
    assert result.kind == kind and result.evaluation.models == 3
    if kind != "knn":  # a few steps on real images of every class already lift the untrained models
        assert result.evaluation.after.mean() > result.evaluation.before.mean(), result.evaluation
    assert stages and all(1 <= done <= total for _, done, total in stages)
    if kind == "knn":
        assert result.lr is None and result.epochs is None and result.grid == {}
        assert result.details["kmeans_knn_acc"] > 0.5  # 1-NN on class centroids of digits
    else:
        assert set(result.grid) == {"lr=learned,epochs=1", "lr=0.01,epochs=1", "lr=0.1,epochs=1"}
        assert result.grid[f"lr={result.lr},epochs={result.epochs}"] == max(result.grid.values())
        assert ("grid", 3, 3) in stages


def test_results_are_reproducible(digits, model):
    first, second = (run("random", digits, model, n_models=2, seed=4) for _ in range(2))
    assert torch.equal(first.evaluation.after, second.evaluation.after) and first.grid == second.grid


def test_layouts_are_class_major(digits):
    train, _ = digits
    steps, ipc = 3, 2
    shape = (steps, train.num_classes * ipc, *train.image_shape)
    labels = class_major_labels(train.num_classes, ipc, steps)
    average = average_images(train, ipc, steps)
    assert average.shape == shape
    for c in range(train.num_classes):
        class_mean = train.images[train.labels == c].mean(0)
        assert torch.allclose(average[labels == c], class_mean.expand(steps * ipc, -1, -1, -1))
    centroids = kmeans_images(train, ipc, steps, seed=0, n_init=1)
    assert centroids.shape == shape
    class_means = torch.stack([train.images[train.labels == c].mean(0) for c in range(train.num_classes)])
    nearest = ((centroids.flatten(2).unsqueeze(2) - class_means.flatten(1)) ** 2).sum(-1).argmin(-1)
    assert (nearest == labels).float().mean() > 0.9  # centroids of class c sit near class c's mean
    real = real_images_per_class(train, ipc, steps, torch.Generator().manual_seed(0))
    assert real.shape == shape


def test_knn_beats_chance(digits, model):
    result = run("knn", digits, model, n_models=3, steps=5)
    assert result.evaluation.after.mean() > 0.5 and result.details["kmeans_knn_acc"] > 0.5


def test_optimized_keeps_the_best_candidates_and_can_reuse_the_random_grid(digits, model):
    result = run("optimized", digits, model, n_models=3, candidates=10)
    assert result.details["kept"] == 2 and result.details["candidates"] == 10 and result.evaluation.models == 3
    assert result.details["selection_acc_kept"] >= result.details["selection_acc_all"]
    random_real = run("random", digits, model, n_models=1)
    assert random_real.grid == result.grid  # optimized searches the random baseline's grid
    reused = run("optimized", digits, model, n_models=3, candidates=10, random_grid=random_real.grid)
    assert reused.grid == result.grid and torch.equal(reused.evaluation.after, result.evaluation.after)


def test_fixed_init_trains_one_model_per_fixed_set(digits, model):
    fixed = FixedInit(dict(model.named_parameters()))
    assert run("average", digits, model, heldout=fixed, n_models=4).evaluation.models == 1
    random_real = run("random", digits, model, heldout=fixed, n_models=3).evaluation
    assert random_real.models == 3 and torch.equal(random_real.before, random_real.before[:1].expand(3))


def test_errors(digits, model):
    with pytest.raises(DDSecError, match="unknown baseline 'best'.*random, optimized"):
        run("best", digits, model)
    with pytest.raises(DDSecError, match="fewer than"):
        run("kmeans", digits, model, steps=200)
    with pytest.raises(DDSecError, match="learned_lrs"):
        run("random", digits, model, learned_lrs=torch.ones(5))
    with pytest.raises(DDSecError, match="random_grid"):
        run("optimized", digits, model, random_grid={"lr=0.5,epochs=1": 0.3})
    assert check_kinds(["knn", "random", "knn"]) == ("random", "knn")
    assert check_kinds(["all"]) == BASELINES


def test_learned_cell_trains_with_the_sets_momenta(digits, model):
    learned = torch.full((STEPS * EPOCHS,), 0.5)
    plain, with_momenta = (run("average", digits, model, n_models=2, learned_lrs=learned, learned_momenta=momenta)
                           for momenta in (None, torch.full((STEPS * EPOCHS,), 0.9)))
    key = "lr=learned,epochs=1"
    assert plain.grid[key] != with_momenta.grid[key]
    assert plain.grid["lr=0.1,epochs=1"] == with_momenta.grid["lr=0.1,epochs=1"]  # the constant cells stay plain SGD
