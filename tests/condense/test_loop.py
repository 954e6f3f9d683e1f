"""Tiny DC, DSA and DM runs: the matching loss falls; checkpoints resume exactly; NaN and Ctrl-C are handled."""

from __future__ import annotations

import pytest
import torch

from ddsec.condense.distribution_matching import distribution_matching_step
from ddsec.condense.gradient_matching import default_loops, gradient_matching_step
from ddsec.condense.loop import ImageSGD, condense
from ddsec.condense.problem import Matching
from ddsec.condense.sampling import RandomBatches
from ddsec.engine import FixedInit, RandomInit, load_checkpoint
from ddsec.errors import DDSecError, NonFiniteError
from ddsec.evaluate import EpochRecipe

CLASSES, IPC = 3, 2


@pytest.fixture
def data():
    """30 real 1×6×6 images, 10 per class, each class around its own mean image."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(CLASSES, 1, 6, 6, generator=g, dtype=torch.float64)
    labels = torch.arange(CLASSES).repeat_interleave(10)
    images = means[labels] + 0.3 * torch.randn(30, 1, 6, 6, generator=g, dtype=torch.float64)
    start = torch.randn(CLASSES * IPC, 1, 6, 6, generator=g, dtype=torch.float64)
    return RandomBatches(images, labels, CLASSES), start


def matching(model, init, sampler, lr, strategy=()):
    return Matching(model, init, sampler, ImageSGD(lr), num_classes=CLASSES, ipc=IPC, batch_real=10, strategy=strategy)


def dc_step(model, init, sampler, strategy=(), lr=0.1):
    recipe = EpochRecipe(epochs=1, momentum=0.0, weight_decay=0.0, decay=1.0)
    return gradient_matching_step(matching(model, init, sampler, lr, strategy), outer_loop=2, net_recipe=recipe)


def dm_step(model, init, sampler, lr=1.0):
    return distribution_matching_step(matching(model, init, sampler, lr))


def test_dc_lowers_its_matching_loss(tiny_cnn, data):
    sampler, start = data
    fixed = FixedInit(dict(tiny_cnn.named_parameters()))  # the same network every iteration: a fixed objective
    result = condense(dc_step(tiny_cnn, fixed, sampler), start, iterations=15, seed=0, fingerprint={})
    assert result.losses.shape == (15,)
    assert float(result.losses[-1]) < 0.7 * float(result.losses[0])


def test_dm_lowers_its_matching_loss(tiny_cnn, data):
    sampler, start = data
    fixed = FixedInit(dict(tiny_cnn.named_parameters()))
    result = condense(dm_step(tiny_cnn, fixed, sampler), start, iterations=15, seed=0, fingerprint={})
    assert float(result.losses[-1]) < 0.5 * float(result.losses[0])


def test_dsa_run_with_random_networks_is_finite_and_moves_the_images(tiny_cnn, data):
    sampler, start = data
    step = dc_step(tiny_cnn, RandomInit(tiny_cnn, "default"), sampler, strategy=("crop", "rotate", "color"))
    result = condense(step, start, iterations=3, seed=0, fingerprint={})
    assert torch.isfinite(result.images).all() and not torch.equal(result.images, start)


def test_interrupted_run_resumes_exactly(tiny_cnn, data, tmp_path):
    sampler, start = data
    step = dm_step(tiny_cnn, RandomInit(tiny_cnn, "default"), sampler)
    whole = condense(step, start, iterations=6, seed=3, fingerprint={"a": 1})
    path = tmp_path / "run.ckpt"

    def stop_at_4(progress):
        if progress.iteration == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        condense(step, start, iterations=6, seed=3, fingerprint={"a": 1}, checkpoint_path=path, on_progress=stop_at_4)
    assert load_checkpoint(path).iteration == 4 and load_checkpoint(path).losses.shape == (4,)
    with pytest.raises(DDSecError, match=r"other settings \(a\)"):
        condense(step, start, iterations=6, seed=3, fingerprint={"a": 2}, checkpoint_path=path, resume=True)
    resumed = condense(step, start, iterations=6, seed=3, fingerprint={"a": 1}, checkpoint_path=path, resume=True)
    assert resumed.resumed_from == 4
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.losses, whole.losses)


def test_nan_stops_with_the_last_good_state_saved(tiny_cnn, data, tmp_path):
    sampler, start = data
    step = dm_step(tiny_cnn, RandomInit(tiny_cnn, "default"), sampler)

    def poisoned(state, generator, iteration):
        new, loss = step(state, generator, iteration)
        return new, float("nan") if iteration == 2 else loss

    path = tmp_path / "run.ckpt"
    with pytest.raises(NonFiniteError, match="iteration 3"):
        condense(poisoned, start, iterations=5, seed=0, fingerprint={}, checkpoint_path=path)
    assert load_checkpoint(path).losses.shape == (2,)


def test_published_loops_by_images_per_class():
    assert default_loops(1) == (1, 1) and default_loops(10) == (10, 50) and default_loops(15) == (10, 50)
