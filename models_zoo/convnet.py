"""ConvNet-3, the benchmark network of gradient matching and distribution matching.

Zhao, Mopuri and Bilen, "Dataset Condensation with Gradient Matching" (arXiv 2006.05929), and
the DSA/DM follow-ups: three blocks of conv3×3(128) → instance norm → ReLU → avg-pool 2, then
a linear classifier. Instance norm is ``GroupNorm(128, 128)`` (no running statistics, so the
network works under ``torch.func.vmap``). As in the reference code, 28 px inputs get padding 3
on the first convolution so they are treated as 32 px (features ``128 × 4 × 4``). Module layout
(``features``, ``classifier``) follows the reference so its state dicts load. Used here as a
model for Wang et al., "Dataset Distillation" (arXiv 1811.10959) and for the ``condense``
distillers.
"""

from __future__ import annotations

from torch import Tensor, nn

from ddsec.errors import DDSecError
from ddsec.models_zoo.registry import register_model

WIDTH = 128
DEPTH = 3


class ConvNet(nn.Module):
    """``DEPTH`` × [conv3×3(``WIDTH``) → instance norm → ReLU → avg-pool 2] → linear.

    Args:
        num_classes: number of logits ``K``.
        in_chans: input channels ``C``.
        image_size: 28, or a multiple of ``2**DEPTH``.
    """

    def __init__(self, num_classes: int, in_chans: int, image_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for depth in range(DEPTH):
            padding = 3 if depth == 0 and image_size == 28 else 1
            layers += [
                nn.Conv2d(channels, WIDTH, kernel_size=3, padding=padding),
                nn.GroupNorm(WIDTH, WIDTH, affine=True),
                nn.ReLU(),
                nn.AvgPool2d(2),
            ]
            channels = WIDTH
        self.features = nn.Sequential(*layers)
        side = (32 if image_size == 28 else image_size) // 2**DEPTH
        self.classifier = nn.Linear(WIDTH * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``[B, C, H, W]`` to logits ``[B, K]``."""
        return self.classifier(self.features(x).flatten(1))


@register_model
def convnet3(*, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """ConvNet-3 (width 128, instance norm, avg-pool) for 28 px or multiple-of-8 px images."""
    if image_size != 28 and image_size % 2**DEPTH != 0:
        raise DDSecError(
            f"convnet3 takes 28 px images or a multiple of 8 px, got {image_size}; "
            "pass --image-size 32"
        )
    return ConvNet(num_classes, in_chans, image_size)
