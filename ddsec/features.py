"""Intermediate features of a network, read through forward hooks under ``functional_call``.

Distribution matching (Zhao and Bilen, arXiv 2110.04181) matches mean embeddings taken just
before the classifier; batch sampling clusters pooled features of a chosen layer of a
pretrained network; the poison detectors of :mod:`ddsec.defences` read a layer's activations.
All name a layer the same way: ``"penultimate"`` is the input of the model's last
``nn.Linear``, any other name is a module of ``model.named_modules()``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torch.func import functional_call

from ddsec.errors import DDSecError

PENULTIMATE = "penultimate"


def layer_names(model: nn.Module) -> list[str]:
    """Every layer name :func:`features` accepts for ``model``."""
    return [PENULTIMATE, *(name for name, _ in model.named_modules() if name)]


def feature_module(model: nn.Module, layer: str, flag: str = "--feature-layer") -> tuple[nn.Module, bool]:
    """The hooked module and whether its *input* (``True``) or output is the feature.

    Raises:
        DDSecError: no such layer (``flag`` is the option named in the one-line message).
    """
    if layer == PENULTIMATE:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise DDSecError(f"{type(model).__name__} has no linear classifier to take features before")
        return linears[-1], True
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        names = layer_names(model)
        raise DDSecError(f"unknown {flag} {layer!r} for {type(model).__name__}; choose one of"
                         f" {', '.join(names[:12])}{' …' if len(names) > 12 else ''}")
    return modules[layer], False


def check_layer(model: nn.Module, layer: str) -> None:
    """Raise :class:`DDSecError` unless ``layer`` names a layer of ``model``."""
    feature_module(model, layer)


def features(model: nn.Module, params: Mapping[str, Tensor], images: Tensor, layer: str = PENULTIMATE) -> Tensor:
    """The features of ``images`` at ``layer``, spatially average-pooled: float ``[B, D]``.

    Args:
        model: the architecture (its own parameters are not used).
        params: name → tensor, the weights to run with.
        images: float ``[B, C, H, W]``.
        layer: ``"penultimate"`` or a module name (see :func:`layer_names`).

    Returns:
        ``[B, D]``: a 4-d output ``[B, D, h, w]`` is averaged over ``h, w``; others are flattened.
    """
    module, take_input = feature_module(model, layer)
    captured: list[Tensor] = []
    if take_input:
        handle = module.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _args, output: captured.append(output))
    try:
        functional_call(model, dict(params), (images,))
    finally:
        handle.remove()
    out = captured[0]
    return out.mean(dim=(2, 3)) if out.dim() == 4 else out.flatten(1)
