"""Model registry and local weight files, in the style of timm.

Factories are registered by name with :func:`register_model` and built with
:func:`create_model`, which also draws the initial weights ``θ0`` (Wang et al., "Dataset
Distillation", arXiv 1811.10959, §3.2: random init, or a fixed pretrained model) from a seeded
scheme or loads them from a local checkpoint. Weights only ever come from local files; nothing
is downloaded, and ``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)`` so no
pickled code runs.
"""

from __future__ import annotations

import fnmatch
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ddsec.engine.init import INIT_SCHEMES, init_module_
from ddsec.errors import DDSecError
from ddsec.models_zoo.timm_models import TIMM_PREFIX, timm_model

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}
_TORCH_SUFFIXES = (".pth", ".pt")


def register_model(fn: ModelFactory) -> ModelFactory:
    """Register a model factory under its function name (use as a bare decorator).

    The factory must accept keyword-only ``num_classes``, ``in_chans`` and ``image_size`` and
    raise :class:`~ddsec.errors.DDSecError` for inputs it cannot handle.

    Args:
        fn: the factory, ``fn(*, num_classes: int, in_chans: int, image_size: int) -> nn.Module``.

    Returns:
        ``fn`` unchanged.

    Raises:
        ValueError: a model with the same name is already registered.
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models, sorted.

    Args:
        pattern: optional shell-style pattern (``fnmatch``), e.g. ``"test_*"``.

    Returns:
        The matching names in alphabetical order.
    """
    names = sorted(_MODELS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_chans: int = 1,
    image_size: int = 28,
    init: str = "default",
    seed: int | None = None,
    checkpoint: str | Path | None = None,
) -> nn.Module:
    """Build a registered model and set its weights.

    Without ``checkpoint`` the weights are drawn with ``init`` (see
    :mod:`ddsec.engine.init`), from ``torch.Generator().manual_seed(seed)`` when ``seed`` is
    given and from the global generator otherwise. With ``checkpoint`` the weights are loaded
    from that local file instead and ``init``/``seed`` only matter for validation.

    Args:
        name: a name from :func:`list_models`, or ``timm/<architecture>`` for a timm model.
        num_classes: number of output logits ``K``.
        in_chans: input channels ``C``.
        image_size: input height and width ``H = W`` in pixels.
        init: ``"default"``, ``"xavier"`` or ``"kaiming"``.
        seed: seed for the initial weights.
        checkpoint: local ``.safetensors``, ``.pth`` or ``.pt`` file holding a state dict.

    Returns:
        The model on CPU in float32, mapping ``[B, C, H, W]`` images to ``[B, K]`` logits.

    Raises:
        DDSecError: unknown name or init scheme, unsupported shape, unusable checkpoint.
    """
    if name not in _MODELS and not name.startswith(TIMM_PREFIX):
        raise DDSecError(f"unknown model {name!r}; available: {', '.join(list_models())}, or timm/<architecture>")
    if init not in INIT_SCHEMES:
        raise DDSecError(f"unknown init {init!r}; choose one of {', '.join(INIT_SCHEMES)}")
    sizes = {"num_classes": num_classes, "in_chans": in_chans, "image_size": image_size}
    for arg, value in sizes.items():
        if value < 1:
            raise DDSecError(f"{arg} must be a positive integer, got {value}")
    factory = _MODELS[name] if name in _MODELS else lambda **sizes: timm_model(name[len(TIMM_PREFIX):], **sizes)
    model = factory(num_classes=num_classes, in_chans=in_chans, image_size=image_size)
    if checkpoint is not None:
        return load_weights(model, checkpoint)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return init_module_(model, init, generator)


def _read_state_dict(path: Path) -> Mapping[str, object]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    return state


def load_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict from a local file into ``module`` in place, strictly.

    Args:
        module: the model to fill; every parameter and buffer must be in the file.
        path: ``.safetensors`` file, or ``.pth``/``.pt`` file holding a state dict (optionally
            under a ``"state_dict"`` key), read with ``weights_only=True``.

    Returns:
        ``module``.

    Raises:
        DDSecError: missing or unreadable file, unknown suffix, missing/unexpected keys or
            shape mismatches.
    """
    path = Path(path)
    if path.suffix not in (".safetensors", *_TORCH_SUFFIXES):
        raise DDSecError(f"weights file {path} must end in .safetensors, .pth or .pt")
    if not path.is_file():
        raise DDSecError(f"weights file {path} not found")
    try:
        state = _read_state_dict(path)
    except pickle.UnpicklingError as exc:
        raise DDSecError(
            f"cannot read weights file {path}: corrupt, or holds objects other than tensors; only "
            "plain state dicts are read (torch.save(model.state_dict(), path) or .safetensors)"
        ) from exc
    except Exception as exc:  # any reader failure means the file is unusable
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise DDSecError(
            f"cannot read weights file {path}: {type(exc).__name__}: {reason}"
        ) from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DDSecError(f"weights file {path} does not hold a state dict of tensors")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DDSecError(
            f"weights file {path} does not match the model: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise DDSecError(
                f"weights file {path} does not match the model: {key} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            )
    module.load_state_dict(state)
    return module


def save_weights(
    module_or_state_dict: nn.Module | Mapping[str, Tensor],
    path: str | Path,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a model's state dict to a safetensors file.

    Args:
        module_or_state_dict: a module, or a mapping name → tensor of any shape and dtype.
        path: destination ending in ``.safetensors``.
        metadata: optional string → string metadata stored in the file header.

    Returns:
        The written path.

    Raises:
        DDSecError: wrong suffix or the file cannot be written.
        TypeError: a metadata key or value is not a string.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise DDSecError(f"weights file {path} must end in .safetensors")
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("metadata keys and values must all be strings")
    state = (
        module_or_state_dict.state_dict()
        if isinstance(module_or_state_dict, nn.Module)
        else module_or_state_dict
    )
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    try:
        save_file(tensors, str(path), metadata=metadata)
    except OSError as exc:
        raise DDSecError(f"cannot write weights file {path}: {exc}") from exc
    return path
