import pytest
import torch

from ddsec.data.transforms import (
    LUMA,
    adapt_stats,
    build_dataset,
    channel_stats,
    convert_channels,
    convert_pixels,
    resize,
)
from ddsec.errors import DDSecError


def test_convert_pixels_shapes_and_range():
    pixels = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    for size, channels, shape in [(None, None, (5, 1, 16, 16)), (28, 3, (5, 3, 28, 28)), (8, 1, (5, 1, 8, 8))]:
        out = convert_pixels(pixels, image_size=size, channels=channels)
        assert out.shape == shape and out.dtype == torch.float32
        assert 0.0 <= out.min() and out.max() <= 1.0


def test_resize_keeps_constant_images_and_non_square_input():
    x = torch.full((2, 3, 40, 30), 0.25)
    out = resize(x, 32)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out, torch.full_like(out, 0.25))
    same = torch.rand(1, 1, 32, 32)
    assert resize(same, 32) is same
    up = resize(torch.rand(1, 1, 8, 8), 28)
    assert up.shape == (1, 1, 28, 28) and 0 <= float(up.min()) and float(up.max()) <= 1


def test_channel_conversion():
    grey = torch.rand(2, 1, 4, 4)
    rgb = convert_channels(grey, 3)
    assert rgb.shape == (2, 3, 4, 4) and torch.equal(rgb[:, 0], rgb[:, 2])
    back = convert_channels(rgb, 1)
    assert torch.allclose(back, grey, atol=1e-6)  # luma weights sum to 1
    assert abs(sum(LUMA) - 1.0) < 1e-9


def test_adapt_stats():
    assert adapt_stats((0.1307,), (0.3081,), 3) == ((0.1307,) * 3, (0.3081,) * 3)
    mean, std = adapt_stats((0.5, 0.5, 0.5), (0.2, 0.2, 0.2), 1)
    assert mean == pytest.approx((0.5,)) and std == pytest.approx((0.2,))


def test_build_dataset_normalises_with_given_or_computed_stats():
    pixels = torch.rand(50, 3, 8, 8)
    ds = build_dataset("t", pixels, torch.arange(50) % 2, class_names=("a", "b"), mean=None, std=None)
    assert ds.images.mean().abs() < 1e-3 and (ds.images.std() - 1).abs() < 1e-2
    assert torch.allclose(ds.denormalize(ds.images), pixels, atol=1e-3)
    ds = build_dataset(
        "t", pixels, torch.zeros(50), class_names=("a",), mean=(0.5,), std=(0.5,), image_size=4, channels=1
    )
    assert ds.images.shape == (50, 1, 4, 4) and ds.labels.dtype == torch.int64
    assert ds.mean == (0.5,)


def test_constant_channel_does_not_divide_by_zero():
    mean, std = channel_stats(torch.zeros(3, 1, 4, 4))
    assert mean == (0.0,) and std == (1.0,)


@pytest.mark.parametrize("size, channels", [(0, None), (-3, None), (2.5, None), (None, 2), (None, 4)])
def test_bad_size_or_channels(size, channels):
    with pytest.raises(DDSecError):
        convert_pixels(torch.zeros(1, 1, 4, 4), image_size=size, channels=channels)
