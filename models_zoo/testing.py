"""Tiny models registered for tests (``test_*``), so tests use the real registry path.

They use Tanh, a smooth activation, so finite-difference checks of the second derivatives
used by the back-gradient pass of Wang et al., "Dataset Distillation" (arXiv 1811.10959, §3)
are meaningful.
"""

from __future__ import annotations

from torch import nn

from ddsec.models_zoo.registry import register_model


@register_model
def test_mlp(*, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """flatten → Linear(C·H·W → 8) → Tanh → Linear(8 → K); any image size.

    Maps images ``[B, C, H, W]`` to logits ``[B, K]``.
    """
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_chans * image_size * image_size, 8),
        nn.Tanh(),
        nn.Linear(8, num_classes),
    )


@register_model
def test_cnn(*, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """conv3×3(4) → Tanh → adaptive avg-pool 2×2 → Linear(16 → K); any image size.

    Maps images ``[B, C, H, W]`` to logits ``[B, K]``.
    """
    return nn.Sequential(
        nn.Conv2d(in_chans, 4, kernel_size=3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )
