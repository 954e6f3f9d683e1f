"""DSA: one parameter draw per seed shared by real and synthetic batches, differentiable, vectorised."""

from __future__ import annotations

import pytest
import torch

from ddsec.condense.augment import (
    DC_AUGMENTATION,
    OPERATIONS,
    dc_augment,
    default_strategy,
    dsa,
    dsa_augment,
    evaluation_augment,
    parse_strategy,
)
from ddsec.errors import DDSecError


def batch(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("op", OPERATIONS)
def test_same_seed_same_transform_for_real_and_synthetic(op):
    real, syn = batch(7, 0), batch(3, 1)
    # Put the synthetic images among the real ones: under one seed they must come out identical.
    mixed = torch.cat([syn, real])
    for seed in range(6):
        assert torch.equal(dsa(mixed, (op,), seed)[:3], dsa(syn, (op,), seed))
        assert torch.equal(dsa(real, (op,), seed), dsa(mixed, (op,), seed)[3:])


def test_siamese_applies_one_transform_to_the_whole_batch():
    image = batch(1, 2)
    copies = image.expand(4, -1, -1, -1).clone()
    for seed in range(8):
        out = dsa(copies, OPERATIONS, seed)
        assert torch.allclose(out, out[:1].expand_as(out))


def test_per_image_draws_differ_and_seeds_differ():
    copies = batch(1, 3).expand(8, -1, -1, -1).clone()
    out = dsa(copies, ("rotate",), 5, siamese=False)
    assert not torch.allclose(out[0], out[1])
    assert not torch.equal(dsa(copies, ("scale",), 1), dsa(copies, ("scale",), 2))


@pytest.mark.parametrize("op", OPERATIONS)
def test_differentiable_wrt_images(op):
    x = batch(3, 4).requires_grad_(True)
    weights = batch(3, 5)
    for seed in range(4):
        (grad,) = torch.autograd.grad((dsa(x, (op,), seed) * weights).sum(), x)
        assert grad.shape == x.shape and torch.isfinite(grad).all()


def test_gradient_matches_finite_differences_through_a_warp():
    x = batch(2, 6).requires_grad_(True)
    direction = batch(2, 7)
    f = lambda z: (dsa(z, ("rotate",), 11) ** 2).sum()  # noqa: E731
    (grad,) = torch.autograd.grad(f(x), x)
    eps = 1e-6
    numeric = (f(x.detach() + eps * direction) - f(x.detach() - eps * direction)) / (2 * eps)
    assert float((grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-5)


def test_crop_is_a_whole_pixel_shift_with_zero_padding():
    x = torch.arange(36, dtype=torch.float64).view(1, 1, 6, 6) + 1
    for seed in range(10):
        out = dsa(x, ("crop",), seed)
        assert torch.allclose(out, out.round(), atol=1e-6)  # whole pixels moved, nothing interpolated
        assert set(out.round().flatten().tolist()) - {0.0} <= set(x.flatten().tolist())


def test_strategies_and_the_digit_default():
    assert parse_strategy("none") == ()
    assert parse_strategy("crop_flip") == ("crop", "flip")
    assert "flip" not in default_strategy("mnist") and "flip" in default_strategy("cifar10")
    assert dsa_augment(()) is None
    with pytest.raises(DDSecError, match="unknown DSA operation 'blur'"):
        parse_strategy("crop_blur")


def test_dc_augment_draws_per_image_from_its_generator():
    copies = batch(1, 8).expand(64, -1, -1, -1).clone()
    out = dc_augment(copies, torch.Generator().manual_seed(0))
    assert out.shape == copies.shape and torch.isfinite(out).all()
    assert torch.equal(out, dc_augment(copies, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, dc_augment(copies, torch.Generator().manual_seed(1)))
    assert len({tuple(o.flatten().tolist()) for o in out}) > 32  # each image its own operation and draw


def test_dc_augment_rotates_further_than_dsa():
    line = torch.zeros(1, 1, 29, 29, dtype=torch.float64)
    line[..., 14, :] = 1.0  # a horizontal line through the centre
    lines = line.expand(300, -1, -1, -1).clone()

    def ink_ten_rows_off(images: torch.Tensor) -> float:  # needs a tilt above 35°: 10 rows over 14 columns
        return float((images[..., 4, :].abs() + images[..., 24, :].abs()).sum())

    assert ink_ten_rows_off(dc_augment(lines, torch.Generator().manual_seed(3))) > 0  # DC: up to ±45°
    assert ink_ten_rows_off(dsa(lines, ("rotate",), 3, siamese=False)) == 0  # DSA: up to ±15°


def test_evaluation_augment_names():
    assert evaluation_augment(DC_AUGMENTATION) is dc_augment
    assert evaluation_augment("none") is None
    assert evaluation_augment("crop") is not None
    with pytest.raises(DDSecError, match="in --augment; .* or dc"):
        evaluation_augment("crop_blur", "--augment")
