"""LeNet, the MNIST/USPS/SVHN network of the dataset-distillation reference code.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §4: LeNet for the digit experiments.
Layer names (``conv1`` … ``fc3``) follow the reference implementation so its state dicts load.
For 28 px inputs the first convolution is padded by 2, as in the reference, so 28 and 32 px
inputs both reach a ``16 × 5 × 5`` feature map.
"""

from __future__ import annotations

from torch import Tensor, nn

from ddsec.errors import DDSecError
from ddsec.models_zoo.registry import register_model


class LeNet(nn.Module):
    """conv5-6 → pool → conv5-16 → pool → fc120 → fc84 → fc``K``, ReLU throughout.

    Args:
        num_classes: number of logits ``K``.
        in_chans: input channels ``C``.
        image_size: 28 or 32.
    """

    def __init__(self, num_classes: int, in_chans: int, image_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 6, 5, padding=2 if image_size == 28 else 0)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``[B, C, H, W]`` to logits ``[B, K]``."""
        out = self.pool(self.act(self.conv1(x)))
        out = self.pool(self.act(self.conv2(out)))
        out = out.flatten(1)
        out = self.act(self.fc1(out))
        out = self.act(self.fc2(out))
        return self.fc3(out)


@register_model
def lenet(*, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """LeNet for 28 or 32 px images with any number of channels."""
    if image_size not in (28, 32):
        raise DDSecError(f"lenet takes 28 or 32 px images, got {image_size}; pass --image-size 28")
    return LeNet(num_classes, in_chans, image_size)
