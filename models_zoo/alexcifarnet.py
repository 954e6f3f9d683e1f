"""AlexCifarNet, the CIFAR-10 network of the dataset-distillation reference code.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §4: the AlexNet-style CIFAR network
(two 5×5 conv layers with local response normalisation, three fully connected layers).
Module layout (``features``, ``classifier``) follows the reference so its state dicts load.
"""

from __future__ import annotations

from torch import Tensor, nn

from ddsec.errors import DDSecError
from ddsec.models_zoo.registry import register_model


def _lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1.0)


class AlexCifarNet(nn.Module):
    """Two conv(5×5, 64) blocks with max-pool and LRN, then fc384 → fc192 → fc``K``.

    Args:
        num_classes: number of logits ``K``.
        in_chans: input channels ``C``.
    """

    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            _lrn(),
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * 8 * 8, 384),
            nn.ReLU(),
            nn.Linear(384, 192),
            nn.ReLU(),
            nn.Linear(192, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``[B, C, 32, 32]`` to logits ``[B, K]``."""
        return self.classifier(self.features(x).flatten(1))


@register_model
def alexcifarnet(*, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """AlexCifarNet for 32 px images with any number of channels."""
    if image_size != 32:
        raise DDSecError(f"alexcifarnet takes 32 px images, got {image_size}; pass --image-size 32")
    return AlexCifarNet(num_classes, in_chans)
