"""Evaluating several models at once through ``torch.func``.

A *population* is a parameter dict whose every tensor has a leading model dimension ``M``
(as from ``torch.func.stack_module_state``). Its forward pass runs either with ``vmap`` over
``functional_call`` (one batched kernel per layer) or with a Python loop over the models (the
fallback for modules vmap cannot take, e.g. BatchNorm updating running statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

Params = dict[str, Tensor]
BATCHING = ("auto", "vmap", "loop")


def stack_params(models_or_dicts: list[nn.Module] | list[Mapping[str, Tensor]]) -> Params:
    """Stack ``M`` models (or parameter dicts) into one population dict of ``[M, …]`` tensors."""
    if not models_or_dicts:
        raise ValueError("cannot stack an empty list of models")
    if isinstance(models_or_dicts[0], nn.Module):
        params, _ = stack_module_state(models_or_dicts)
        return {k: v.detach() for k, v in params.items()}
    keys = list(models_or_dicts[0].keys())
    return {k: torch.stack([d[k].detach() for d in models_or_dicts]) for k in keys}


def population_size(params: Mapping[str, Tensor]) -> int:
    """``M``, the leading dimension of a population dict."""
    return next(iter(params.values())).shape[0]


def select(params: Mapping[str, Tensor], index: int | Tensor) -> Params:
    """Model ``index`` (an int) or a sub-population (an int64 index tensor) of a population."""
    return {k: v[index] for k, v in params.items()}


def is_stacked(model: nn.Module, params: Mapping[str, Tensor]) -> bool:
    """Whether ``params`` carries a leading model dimension relative to ``model``'s own shapes.

    Raises:
        ValueError: if the names or shapes do not fit ``model`` either way.
    """
    own = dict(model.named_parameters())
    missing = sorted(set(own) - set(params))
    if missing:
        raise ValueError(f"params lack {len(missing)} of the model's parameters, e.g. {missing[0]!r}")
    name, ref = next(iter(own.items()))
    shape = tuple(params[name].shape)
    if shape == tuple(ref.shape):
        return False
    if shape[1:] == tuple(ref.shape):
        return True
    raise ValueError(f"parameter {name!r} has shape {shape}; the model expects {tuple(ref.shape)}")


LOOP_FROM = 64
"""Images per model from which ``auto`` runs a convolutional population one model at a time on CPU."""


def resolve_batching(model: nn.Module, batching: str, inputs: Tensor | None = None) -> str:
    """Pick ``vmap`` or ``loop``. ``auto`` takes vmap, except a loop when a module keeps running
    statistics, or when ``inputs`` (one batch ``[B, C, H, W]`` shared by every model) is a CPU batch
    of at least :data:`LOOP_FROM` images and the model convolves: vmap makes its convolutions
    grouped ones, which measured 1.15–1.75× slower on CPU than one call per model for LeNet and
    AlexCifarNet from 64 images on (``benchmarks/engine.py --only batching``), while on small batches
    and on GPUs vmap is the faster."""
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
    if batching != "auto":
        return batching
    keeps_stats = any(
        getattr(m, "track_running_stats", False) and m.training for m in model.modules()
    )
    large_on_cpu = inputs is not None and inputs.device.type == "cpu" and inputs.shape[0] >= LOOP_FROM
    convolves = large_on_cpu and any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return "loop" if keeps_stats or convolves else "vmap"


def population_forward(
    model: nn.Module, batching: str, *, shared_input: bool = True
) -> Callable[[Params, Tensor], Tensor]:
    """A function ``(params [M, …], x) -> logits [M, B, K]``, differentiable twice.

    Args:
        shared_input: ``x`` is one batch ``[B, C, H, W]`` given to every model; otherwise ``x``
            is ``[M, B, C, H, W]``, one batch per model (population training).
    """
    how = resolve_batching(model, batching)

    def one(p: Params, x: Tensor) -> Tensor:
        return functional_call(model, p, (x,))

    if how == "vmap":
        return vmap(one, in_dims=(0, None if shared_input else 0))

    def looped(params: Params, x: Tensor) -> Tensor:
        return torch.stack([one(select(params, m), x if shared_input else x[m])
                            for m in range(population_size(params))])

    return looped
