"""timm architectures through the registry: ``create_model("timm/<architecture>", …)``.

Populations, victims and transfer evaluations can then use any timm model (e.g.
``timm/resnet10t``) built for the dataset's classes, channels and image size. Weights are never
fetched from a hub: timm builds the architecture with ``pretrained=False`` and the registry
draws or loads the weights like for its own models.
"""

from __future__ import annotations

import torch
from torch import nn

from ddsec.errors import DDSecError

TIMM_PREFIX = "timm/"


def timm_model(architecture: str, *, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """A randomly initialised timm ``architecture`` for ``[B, in_chans, image_size, image_size]`` inputs.

    Raises:
        DDSecError: timm does not know the architecture, or it cannot take inputs of that size.
    """
    import timm

    if architecture not in timm.list_models():
        raise DDSecError(f"unknown timm architecture {architecture!r}; `python -c \"import timm;"
                         f" print(timm.list_models('resnet*'))\"` lists them")
    settings = {"pretrained": False, "num_classes": num_classes, "in_chans": in_chans}
    try:
        model = timm.create_model(architecture, img_size=image_size, **settings)
    except TypeError:  # convolutional networks take any size and no img_size argument
        model = timm.create_model(architecture, **settings)
    try:
        with torch.no_grad():
            logits = model.eval()(torch.zeros(1, in_chans, image_size, image_size))
    except RuntimeError as exc:
        raise DDSecError(f"timm/{architecture} cannot take {image_size}x{image_size} inputs"
                         f" ({str(exc).splitlines()[0]})") from None
    if tuple(logits.shape) != (1, num_classes):
        raise DDSecError(f"timm/{architecture} gives logits of shape {tuple(logits.shape)}, not [B, {num_classes}]")
    return model
