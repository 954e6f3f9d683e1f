"""Weight initialisers, driven by an explicit ``torch.Generator``.

The paper (Wang et al., arXiv 1811.10959, §3.2) samples ``θ0`` from the network's random-init
distribution, Xavier-normal in the reference code. Three schemes are offered:

- ``xavier``: Xavier/Glorot normal weights, zero biases (the paper's default);
- ``kaiming``: Kaiming/He normal weights (fan-in, ReLU gain), zero biases;
- ``default``: PyTorch's own layer default (Kaiming-uniform with ``a=√5``, uniform bias in
  ``±1/√fan_in``), reproduced here so that it can take a generator.

Only tensors named ``*weight`` with two or more dimensions and ``*bias`` are touched; other
parameters (norm-layer scales and shifts) are set to ones and zeros.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

INIT_SCHEMES = ("xavier", "kaiming", "default")


def _fans(weight: Tensor) -> tuple[int, int]:
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def init_tensors(
    shapes: dict[str, Tensor], scheme: str, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Sample fresh values for a parameter dict.

    Args:
        shapes: name → template tensor; only its shape, dtype and device are used. Names follow
            ``nn.Module.named_parameters()`` (``conv1.weight``, ``fc.bias`` …).
        scheme: one of :data:`INIT_SCHEMES`.
        generator: source of randomness; must live on the templates' device.

    Returns:
        A new dict with the same keys, shapes, dtypes and devices.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    weight_fan_in: dict[str, int] = {}
    out: dict[str, Tensor] = {}
    for name, template in shapes.items():
        t = torch.empty_like(template, memory_format=torch.contiguous_format)
        prefix, _, leaf = name.rpartition(".")
        if leaf == "weight" and t.dim() >= 2:
            fan_in, fan_out = _fans(t)
            weight_fan_in[prefix] = fan_in
            if scheme == "xavier":
                std = math.sqrt(2.0 / (fan_in + fan_out))
                t.normal_(0.0, std, generator=generator)
            elif scheme == "kaiming":
                t.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            else:
                bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform with a=sqrt(5)
                t.uniform_(-bound, bound, generator=generator)
        elif leaf == "weight":
            t.fill_(1.0)
        else:
            t.zero_()
        out[name] = t
    if scheme == "default":
        for name, t in out.items():
            prefix, _, leaf = name.rpartition(".")
            if leaf == "bias" and prefix in weight_fan_in:
                bound = 1.0 / math.sqrt(weight_fan_in[prefix])
                t.uniform_(-bound, bound, generator=generator)
    return out


def init_module_(
    module: torch.nn.Module, scheme: str, generator: torch.Generator | None = None
) -> torch.nn.Module:
    """Re-initialise ``module``'s parameters in place with ``scheme``; returns the module."""
    params = dict(module.named_parameters())
    fresh = init_tensors(params, scheme, generator)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(fresh[name])
    return module
