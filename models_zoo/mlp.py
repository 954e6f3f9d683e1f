"""A two-hidden-layer perceptron for any image size.

A fully connected baseline for Wang et al., "Dataset Distillation" (arXiv 1811.10959):
flatten → 256 → 256 → ``K`` with ReLU.
"""

from __future__ import annotations

from torch import nn

from ddsec.models_zoo.registry import register_model

HIDDEN = 256


@register_model
def mlp(*, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """MLP mapping images ``[B, C, H, W]`` to logits ``[B, K]``."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_chans * image_size * image_size, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, num_classes),
    )
