"""Deliverable images: projection to valid pixels and an ε-ball, 8-bit delivery, lossless PNG round trips."""

from __future__ import annotations

import pytest
import torch

from ddsec.data.pixels import PixelConstraint, from_levels, load_pngs, pixel_report, save_pngs, to_pixels
from ddsec.errors import DDSecError

GREY = ((0.5,), (0.25,))
RGB = ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))


def wild(channels: int, seed: int = 0) -> torch.Tensor:
    """Normalised images ``[2, 3, C, 6, 6]`` whose pixels spread well beyond [0, 1]."""
    return 3 * torch.randn(2, 3, channels, 6, 6, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("stats", [GREY, RGB])
def test_projection_and_8bit_delivery(stats):
    mean, std = stats
    x = wild(len(mean))
    assert pixel_report(x, mean, std)["outside_fraction"] > 0.3
    PixelConstraint(mean, std).project_(x)
    pixels = to_pixels(x, mean, std)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    delivered = PixelConstraint(mean, std, quantize=True).deliver(x)
    report = pixel_report(delivered, mean, std)
    assert report["8bit"] and report["outside_fraction"] == 0
    assert (to_pixels(delivered, mean, std) - pixels).abs().max() <= 0.5 / 255 + 1e-6


def test_epsilon_ball_holds_after_rounding():
    mean, std = GREY
    anchors = from_levels(torch.randint(0, 256, (2, 3, 1, 6, 6), generator=torch.Generator().manual_seed(1)), mean, std)
    constraint = PixelConstraint(mean, std, quantize=True, epsilon=8 / 255, anchors=anchors)
    delivered = constraint.deliver(anchors + wild(1, seed=2))
    report = pixel_report(delivered, mean, std, anchors)
    assert report["8bit"] and report["outside_fraction"] == 0
    assert 7 / 255 < report["max_perturbation"] <= 8 / 255 + 1e-6


@pytest.mark.parametrize("stats", [GREY, RGB])
def test_png_round_trip_is_exact(stats, tmp_path):
    mean, std = stats
    images = PixelConstraint(mean, std, quantize=True).deliver(wild(len(mean)))
    labels = torch.arange(6).view(2, 3)
    folder = save_pngs(tmp_path / "batch", images, labels, mean, std)
    assert sorted(p.name for p in folder.iterdir())[:2] == ["labels.csv", "step0-000.png"]
    loaded, loaded_labels = load_pngs(folder, mean, std)
    assert torch.equal(loaded, images) and torch.equal(loaded_labels, labels)


def test_png_export_refuses_what_it_cannot_keep(tmp_path):
    mean, std = GREY
    free = wild(1)
    with pytest.raises(DDSecError, match="not made of 8-bit pixels"):
        save_pngs(tmp_path / "a", free, torch.zeros(2, 3, dtype=torch.int64), mean, std)
    with pytest.raises(DDSecError, match="needs hard labels"):
        save_pngs(tmp_path / "b", free, torch.rand(2, 3, 10), mean, std)
    with pytest.raises(DDSecError, match="cannot read the PNG batch"):
        load_pngs(tmp_path / "missing", mean, std)
    with pytest.raises(DDSecError, match="--epsilon must lie in"):
        PixelConstraint(mean, std, epsilon=2.0, anchors=free)
