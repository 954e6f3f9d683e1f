"""AlexNet (torchvision layout) for the ImageNet → PASCAL-VOC / CUB-200 adaptation experiments.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §4.3: distilled images adapt an
ImageNet-pretrained AlexNet to new domains. The layout is ``torchvision.models.alexnet`` so
torchvision's ImageNet state dict loads through ``create_model(..., checkpoint=path)`` from a
local file; nothing is downloaded. Its dropout layers are kept (the engine runs models in eval
mode).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import alexnet as tv_alexnet

from ddsec.errors import DDSecError
from ddsec.models_zoo.registry import register_model

MIN_IMAGE_SIZE = 63  # smallest input whose third max-pool still has a 3×3 window


@register_model
def alexnet(*, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """torchvision AlexNet for RGB images of at least 63 px (224 px for ImageNet weights).

    Maps images ``[B, 3, H, W]`` to logits ``[B, K]``.
    """
    if in_chans != 3:
        raise DDSecError(f"alexnet takes 3-channel images, got {in_chans}; pass --in-chans 3")
    if image_size < MIN_IMAGE_SIZE:
        raise DDSecError(
            f"alexnet takes images of at least {MIN_IMAGE_SIZE} px, got {image_size}; "
            "pass --image-size 224"
        )
    model = tv_alexnet(weights=None, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False  # out of place, like the other zoo models, for torch.func
    return model
