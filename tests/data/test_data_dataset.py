import pytest
import torch

from ddsec.data import ImageDataset


def _ds(n: int = 4, c: int = 3) -> ImageDataset:
    return ImageDataset(
        name="toy",
        images=torch.zeros(n, c, 5, 6),
        labels=torch.arange(n) % 2,
        num_classes=2,
        class_names=("a", "b"),
        mean=(0.5,) * c,
        std=(0.25,) * c,
    )


def test_shape_helpers():
    ds = _ds()
    assert len(ds) == 4
    assert ds.image_shape == (3, 5, 6)


def test_denormalize_roundtrip_and_clamp():
    ds = _ds(c=1)
    x = torch.tensor([-2.0, 0.0, 2.0, 10.0]).view(1, 1, 2, 2)
    assert torch.allclose(ds.denormalize(x, clamp=False).flatten(), torch.tensor([0.0, 0.5, 1.0, 3.0]))
    assert ds.denormalize(x).max() == 1.0
    # works on [S, N, C, H, W] too (distilled-set layout)
    assert ds.denormalize(torch.zeros(2, 3, 1, 4, 4)).shape == (2, 3, 1, 4, 4)


def test_frozen_and_validated():
    ds = _ds()
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError):
        ImageDataset("x", torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.int64), 1, ("a",), (0.0,), (1.0,))
    with pytest.raises(ValueError):
        ImageDataset("x", torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), 1, ("a",), (0.0, 0.0), (1.0,))
    with pytest.raises(ValueError):
        x64 = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
        ImageDataset("x", x64, torch.zeros(2, dtype=torch.int64), 1, ("a",), (0.0,), (1.0,))
