"""The ImageNet source: torchvision's AlexNet with local ImageNet weights, re-headed for the target.

Wang et al. (arXiv 1811.10959), §4.3: an ImageNet-pretrained AlexNet is adapted to PASCAL-VOC
(20 classes, object crops) and CUB-200-2011 (200 birds) with one distilled image per class.
The last layer is replaced for the target classes with weights 0 and bias 1, as in the paper, so
the adapted model starts out predicting uniformly and the distilled steps do all the work.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ddsec.errors import DDSecError
from ddsec.models_zoo import create_model, load_weights

IMAGENET_TARGETS = ("voc", "cub")
IMAGENET_SIZE = 224
WEIGHTS_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def require_weights(weights: str | Path | None) -> Path:
    """The weights file's path; a missing one is a clear error that says where to get it."""
    if weights is None:
        raise DDSecError(f"--src imagenet needs --weights PATH: download torchvision's ImageNet AlexNet from"
                         f" {WEIGHTS_URL} and pass the file")
    if not Path(weights).is_file():
        raise DDSecError(f"ImageNet AlexNet weights not found at {weights}; download {WEIGHTS_URL} there"
                         " (or pass --weights with the file's path)")
    return Path(weights)


def imagenet_alexnet(weights: str | Path | None, num_classes: int, image_size: int = IMAGENET_SIZE) -> nn.Module:
    """AlexNet with the ImageNet weights in ``weights`` and a fresh ``num_classes`` head (eval mode).

    Args:
        weights: a local ``.pth`` state dict (read with ``weights_only=True``) or ``.safetensors``
            file of torchvision's ImageNet AlexNet.
        num_classes: target classes ``K``; the head ``classifier.6`` becomes ``Linear(4096, K)``
            with zero weights and unit bias.
        image_size: input side in pixels (224 for the ImageNet weights; at least 63).

    Returns:
        The model mapping images ``[B, 3, H, W]`` to logits ``[B, K]``.

    Raises:
        DDSecError: no weights given, or a missing or unusable file (the message says where to get it).
    """
    model = create_model("alexnet", num_classes=1000, in_chans=3, image_size=image_size)
    model = load_weights(model, require_weights(weights))
    head = nn.Linear(model.classifier[6].in_features, num_classes)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(1.0)
    model.classifier[6] = head
    return model.eval()
