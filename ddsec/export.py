"""Distilled sets on disk: one safetensors file, plus PNG grids for looking at them.

A distilled set (Wang et al., "Dataset Distillation", arXiv 1811.10959) is ``S`` step batches of
``N`` synthetic images with fixed labels, replayed for ``E`` epochs with one learned step size
per inner step (``T = S·E``). The file format ``ddsec.distilled/1`` (see DESIGN.md, "Distilled-set
file format") is a single safetensors file with

* tensors ``images`` float32 ``[S, N, C, H, W]`` (normalised model-input space), ``labels``
  int64 ``[S, N]`` or float32 ``[S, N, K]`` (soft labels), ``lrs`` float32 ``[T]`` (positive),
  and, only for sets trained with a learned inner momentum, ``momenta`` float32 ``[T]`` in
  ``(0, 1)`` (SGD with momentum ``momenta[t]`` at step ``t``); such files say
  ``ddsec.distilled/2``, so that a reader that knows only version 1 refuses them rather than
  replaying them without momentum;
* string metadata ``format``, ``ddsec_version``, ``task``, ``dataset``, ``model``, ``steps``,
  ``epochs``, ``ipc``, ``init``, ``mean`` and ``std`` (JSON lists), ``seed``, ``num_classes``,
  ``config`` (JSON of the whole run) and, only when set, ``attack_class``, ``target_class``,
  ``source``, ``target``.

Files are only ever read with safetensors (no pickle, no ``torch.load``); every problem with a
file is a :class:`~ddsec.errors.FormatError` whose one-line message names the file.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from ddsec._io import atomic_write
from ddsec.errors import FormatError

__all__ = [
    "FORMAT",
    "FORMAT_MOMENTUM",
    "TASKS",
    "DistilledMeta",
    "DistilledSet",
    "load_distilled",
    "save_distilled",
    "save_grid_png",
]

FORMAT_NAME = "ddsec.distilled"
FORMAT_VERSION = 2
FORMAT = f"{FORMAT_NAME}/1"
"""The ``format`` metadata string this module writes for plain-SGD sets."""
FORMAT_MOMENTUM = f"{FORMAT_NAME}/{FORMAT_VERSION}"
"""The ``format`` string of sets with learned momenta (the newest version this module reads)."""
TASKS = ("distill", "poison", "adapt")
"""Allowed values of :attr:`DistilledMeta.task`."""

_TENSORS = ("images", "labels", "lrs")
_INT_RE = re.compile(r"-?[0-9]+")


class _Problem(Exception):
    """Internal: what is wrong with a set; the public functions add the file name."""


# --------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistilledMeta:
    """Everything about a distilled set besides its tensors.

    Attributes:
        task: ``"distill"``, ``"poison"`` or ``"adapt"``.
        dataset: Dataset the set was distilled from (for ``adapt``: the target domain's).
        model: Registered model name the set was optimised for.
        epochs: Times the ``S`` step batches are replayed (``E``; ``T = S·E``).
        ipc: Images per class in each step batch.
        init: Initial-weight distribution used while distilling (e.g. ``"xavier"``).
        mean: Per-channel normalisation mean, length ``C``.
        std: Per-channel normalisation std (positive), length ``C``.
        seed: Seed of the run.
        num_classes: Number of classes ``K``; hard labels lie in ``[0, K)``.
        config: JSON-serialisable configuration of the whole run.
        attack_class: Poison only: the class ``K`` to be mislabelled.
        target_class: Poison only: the label ``T`` it should receive.
        source: Adapt only: source domain name.
        target: Adapt only: target domain name.
    """

    task: str
    dataset: str
    model: str
    epochs: int
    ipc: int
    init: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    num_classes: int
    config: dict[str, Any] = field(default_factory=dict)
    attack_class: int | None = None
    target_class: int | None = None
    source: str | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        # Accept any sequence of real numbers for mean/std; store a tuple of floats.
        for name in ("mean", "std"):
            values = getattr(self, name)
            if isinstance(values, Sequence) and not isinstance(values, str):
                if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    object.__setattr__(self, name, tuple(float(v) for v in values))


@dataclass(frozen=True, eq=False)
class DistilledSet:
    """A distilled set: synthetic step batches, their labels and step sizes.

    Attributes:
        images: float32 ``[S, N, C, H, W]`` in the model's normalised input space.
        labels: int64 ``[S, N]`` class indices, or float32 ``[S, N, K]`` soft labels.
        lrs: float32 ``[T]`` positive step sizes, ``T = S * meta.epochs``; inner step ``t``
            uses batch ``t mod S`` with step size ``lrs[t]``.
        meta: Descriptive metadata.
        momenta: ``None`` (plain SGD) or float32 ``[T]`` in ``(0, 1)``: the inner steps are then
            SGD with momentum ``momenta[t]`` (``torch.optim.SGD``, ``dampening=0``).
    """

    images: Tensor
    labels: Tensor
    lrs: Tensor
    meta: DistilledMeta
    momenta: Tensor | None = None

    @property
    def steps(self) -> int:
        """``S``, the number of distinct step batches."""
        return int(self.images.shape[0])

    @property
    def total_steps(self) -> int:
        """``T = S * epochs``, the number of inner steps."""
        return self.steps * self.meta.epochs

    @property
    def images_per_step(self) -> int:
        """``N``, images in each step batch."""
        return int(self.images.shape[1])

    @property
    def soft_labels(self) -> bool:
        """Whether ``labels`` are float ``[S, N, K]`` soft labels."""
        return self.labels.dim() == 3

    def validate(self) -> None:
        """Check tensors and metadata against the file format.

        Raises:
            FormatError: One line describing the first problem found.
        """
        try:
            _check_set(self)
        except _Problem as exc:
            raise FormatError(f"invalid distilled set: {exc}") from None


# --------------------------------------------------------------------------------------------
# Validation (shared by save and load)
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_str(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise _Problem(f"{name} must be a non-empty string, got {value!r}")


def _check_int(name: str, value: object, *, minimum: int | None = None) -> None:
    if not _is_int(value):
        raise _Problem(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:  # type: ignore[operator]
        raise _Problem(f"{name} must be at least {minimum}, got {value}")


def _check_stats(meta: DistilledMeta) -> None:
    for name in ("mean", "std"):
        values = getattr(meta, name)
        if not isinstance(values, tuple) or not values:
            raise _Problem(f"{name} must be a non-empty tuple of floats, got {values!r}")
        if not all(isinstance(v, float) and math.isfinite(v) for v in values):
            raise _Problem(f"{name} must contain finite floats, got {list(values)}")
    if len(meta.mean) != len(meta.std):
        raise _Problem(f"mean has {len(meta.mean)} channels but std has {len(meta.std)}")
    if min(meta.std) <= 0:
        raise _Problem(f"std must be positive, got {list(meta.std)}")


def _check_task_details(meta: DistilledMeta) -> None:
    for name in ("attack_class", "target_class"):
        value = getattr(meta, name)
        if value is not None and not (_is_int(value) and 0 <= value < meta.num_classes):
            raise _Problem(f"{name} must be a class in [0, {meta.num_classes}), got {value!r}")
    _check_str("source", meta.source, optional=True)
    _check_str("target", meta.target, optional=True)
    if meta.task == "poison":
        if meta.attack_class is None or meta.target_class is None:
            raise _Problem("a poison set needs attack_class and target_class")
        if meta.attack_class == meta.target_class:
            raise _Problem(f"attack_class and target_class are both {meta.attack_class}")
    if meta.task == "adapt" and (meta.source is None or meta.target is None):
        raise _Problem("an adapt set needs source and target")


def _check_meta(meta: DistilledMeta) -> None:
    if not isinstance(meta, DistilledMeta):
        raise _Problem(f"meta must be a DistilledMeta, got {type(meta).__name__}")
    if meta.task not in TASKS:
        raise _Problem(f"task must be one of {', '.join(TASKS)}, got {meta.task!r}")
    for name in ("dataset", "model", "init"):
        _check_str(name, getattr(meta, name))
    _check_int("epochs", meta.epochs, minimum=1)
    _check_int("ipc", meta.ipc, minimum=1)
    _check_int("num_classes", meta.num_classes, minimum=2)
    _check_int("seed", meta.seed)
    _check_stats(meta)
    if not isinstance(meta.config, dict):
        raise _Problem(f"config must be a dict, got {type(meta.config).__name__}")
    _check_task_details(meta)


def _check_tensor(name: str, value: object, dtype: torch.dtype, rank: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise _Problem(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype != dtype or value.dim() != rank:
        raise _Problem(
            f"{name} must be {dtype} with {rank} dimensions, got {value.dtype}"
            f" with shape {list(value.shape)}"
        )
    return value


def _check_images(images: object, meta: DistilledMeta) -> None:
    images = _check_tensor("images", images, torch.float32, 5)
    channels = images.shape[2]
    if min(images.shape) < 1:
        raise _Problem(f"images must not be empty, got shape {list(images.shape)}")
    if channels != len(meta.mean):
        raise _Problem(f"images have {channels} channels but mean/std have {len(meta.mean)}")
    if not torch.isfinite(images).all():
        raise _Problem("images contain NaN or inf")


def _check_labels(labels: object, images: Tensor, num_classes: int) -> None:
    if isinstance(labels, Tensor) and labels.dim() == 3:
        labels = _check_tensor("soft labels", labels, torch.float32, 3)
        expected = [*images.shape[:2], num_classes]
        if list(labels.shape) != expected:
            raise _Problem(f"soft labels must have shape {expected}, got {list(labels.shape)}")
        if not torch.isfinite(labels).all():
            raise _Problem("soft labels contain NaN or inf")
        return
    labels = _check_tensor("labels", labels, torch.int64, 2)
    if list(labels.shape) != list(images.shape[:2]):
        raise _Problem(
            f"labels must have shape {list(images.shape[:2])} (images' [S, N]),"
            f" got {list(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise _Problem(
            f"labels must lie in [0, {num_classes}), got values"
            f" {int(labels.min())}..{int(labels.max())}"
        )


def _check_per_step(name: str, value: object, steps: int, epochs: int) -> Tensor:
    """``value`` as a float32 ``[steps·epochs]`` tensor, one entry per inner step."""
    tensor = _check_tensor(name, value, torch.float32, 1)
    if tensor.shape[0] != steps * epochs:
        raise _Problem(
            f"{name} has {tensor.shape[0]} entries but steps*epochs = {steps}*{epochs} = {steps * epochs}"
        )
    return tensor


def _check_lrs(lrs: object, steps: int, epochs: int) -> None:
    lrs = _check_per_step("lrs", lrs, steps, epochs)
    if not torch.isfinite(lrs).all():
        raise _Problem("lrs contain NaN or inf")
    if (lrs <= 0).any():
        raise _Problem(f"lrs must be positive, got minimum {float(lrs.min()):g}")


def _check_momenta(momenta: object, steps: int, epochs: int) -> None:
    momenta = _check_per_step("momenta", momenta, steps, epochs)
    if not bool(((momenta > 0) & (momenta < 1)).all()):
        raise _Problem("momenta must lie in (0, 1)")


def _check_set(dset: DistilledSet) -> None:
    _check_meta(dset.meta)
    _check_images(dset.images, dset.meta)
    _check_labels(dset.labels, dset.images, dset.meta.num_classes)
    _check_lrs(dset.lrs, dset.steps, dset.meta.epochs)
    if dset.momenta is not None:
        _check_momenta(dset.momenta, dset.steps, dset.meta.epochs)


# --------------------------------------------------------------------------------------------
# Metadata <-> strings
# --------------------------------------------------------------------------------------------


def _meta_to_strings(meta: DistilledMeta, steps: int, fmt: str) -> dict[str, str]:
    from ddsec import __version__

    try:
        config = json.dumps(meta.config, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise _Problem(f"config is not JSON-serialisable: {exc}") from None
    out = {
        "format": fmt,
        "ddsec_version": __version__,
        "task": meta.task,
        "dataset": meta.dataset,
        "model": meta.model,
        "steps": str(steps),
        "epochs": str(meta.epochs),
        "ipc": str(meta.ipc),
        "init": meta.init,
        "mean": json.dumps(list(meta.mean)),
        "std": json.dumps(list(meta.std)),
        "seed": str(meta.seed),
        "num_classes": str(meta.num_classes),
        "config": config,
    }
    for name in ("attack_class", "target_class", "source", "target"):
        value = getattr(meta, name)
        if value is not None:
            out[name] = str(value)
    return out


def _raw(raw: Mapping[str, str], key: str) -> str:
    if key not in raw:
        raise _Problem(f"metadata {key!r} is missing")
    return raw[key]


def _raw_int(raw: Mapping[str, str], key: str) -> int:
    text = _raw(raw, key)
    if not _INT_RE.fullmatch(text):
        raise _Problem(f"metadata {key!r} is not an integer: {text[:40]!r}")
    return int(text)


def _raw_json(raw: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(_raw(raw, key))
    except json.JSONDecodeError as exc:
        raise _Problem(f"metadata {key!r} is not valid JSON ({exc.msg} at {exc.pos})") from None


def _raw_floats(raw: Mapping[str, str], key: str) -> tuple[float, ...]:
    values = _raw_json(raw, key)
    ok = isinstance(values, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    )
    if not ok:
        raise _Problem(f"metadata {key!r} must be a JSON list of numbers")
    return tuple(float(v) for v in values)


def _meta_from_strings(raw: Mapping[str, str]) -> tuple[DistilledMeta, int]:
    config = _raw_json(raw, "config")
    if not isinstance(config, dict):
        raise _Problem("metadata 'config' must be a JSON object")
    meta = DistilledMeta(
        task=_raw(raw, "task"),
        dataset=_raw(raw, "dataset"),
        model=_raw(raw, "model"),
        epochs=_raw_int(raw, "epochs"),
        ipc=_raw_int(raw, "ipc"),
        init=_raw(raw, "init"),
        mean=_raw_floats(raw, "mean"),
        std=_raw_floats(raw, "std"),
        seed=_raw_int(raw, "seed"),
        num_classes=_raw_int(raw, "num_classes"),
        config=config,
        attack_class=_raw_int(raw, "attack_class") if "attack_class" in raw else None,
        target_class=_raw_int(raw, "target_class") if "target_class" in raw else None,
        source=raw.get("source"),
        target=raw.get("target"),
    )
    return meta, _raw_int(raw, "steps")


def _check_format(raw: Mapping[str, str], path: Path) -> int:
    """The file's format version; a foreign or too-new file is a :class:`FormatError`."""
    fmt = raw.get("format")
    prefix = FORMAT_NAME + "/"
    version = fmt[len(prefix) :] if fmt is not None and fmt.startswith(prefix) else ""
    if not version.isdigit() or int(version) < 1:
        shown = "missing" if fmt is None else repr(fmt[:60])
        raise FormatError(f"{path} is not a ddsec distilled set (format {shown})")
    if int(version) > FORMAT_VERSION:
        raise FormatError(
            f"{path} has format {fmt!r}, newer than this ddsec reads ({FORMAT_MOMENTUM}); upgrade ddsec"
        )
    return int(version)


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------


def _as_stored(tensor: Tensor) -> Tensor:
    """Detached, contiguous CPU copy; floating tensors become float32."""
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    return tensor.contiguous()


def save_distilled(path: str | os.PathLike[str], dset: DistilledSet) -> Path:
    """Write a distilled set as one safetensors file, atomically: ``ddsec.distilled/1``, or
    ``ddsec.distilled/2`` when it holds momenta.

    Tensors are detached and moved to the CPU; floating tensors are stored as float32. The set
    is validated first (the same checks as :func:`load_distilled`), parent directories are
    created, and the file is written to a temporary file, fsynced and moved into place.

    Args:
        path: Destination file (conventionally ``*.safetensors``).
        dset: The set; ``images`` ``[S, N, C, H, W]``, ``labels`` ``[S, N]`` int64 or
            ``[S, N, K]`` float, ``lrs`` ``[S * epochs]`` positive float.

    Returns:
        The destination path.

    Raises:
        FormatError: The set is invalid (nothing is written).
    """
    path = Path(path)
    try:
        if not isinstance(dset, DistilledSet):
            raise _Problem(f"expected a DistilledSet, got {type(dset).__name__}")
        names = _TENSORS if dset.momenta is None else (*_TENSORS, "momenta")
        tensors = {name: getattr(dset, name) for name in names}
        if not all(isinstance(t, Tensor) for t in tensors.values()):
            raise _Problem(f"{', '.join(names)} must be torch.Tensor")
        tensors = {name: _as_stored(t) for name, t in tensors.items()}
        stored = DistilledSet(meta=dset.meta, **tensors)
        _check_set(stored)
        metadata = _meta_to_strings(dset.meta, stored.steps, FORMAT if dset.momenta is None else FORMAT_MOMENTUM)
    except _Problem as exc:
        raise FormatError(f"cannot save {path}: {exc}") from None
    data = st_save(tensors, metadata=metadata)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Read metadata and, if the format matches, our tensors (never anything else)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
            names = _TENSORS if _check_format(raw, path) == 1 else (*_TENSORS, "momenta")
            keys = set(fh.keys())
            missing = [name for name in names if name not in keys]
            if missing:
                raise FormatError(f"{path}: missing tensor(s) {', '.join(missing)}")
            return dict(raw), {name: fh.get_tensor(name) for name in names}
    except (SafetensorError, TypeError, ValueError, RuntimeError) as exc:
        raise FormatError(
            f"{path} is not a safetensors file or is truncated ({_one_line(exc)})"
        ) from None
    except OSError as exc:
        raise FormatError(f"cannot read {path}: {exc.strerror or _one_line(exc)}") from None


def load_distilled(path: str | os.PathLike[str]) -> DistilledSet:
    """Read and validate a distilled set written by :func:`save_distilled`.

    Only safetensors is used to read the file (no pickle). A foreign safetensors file (e.g. a
    model checkpoint) is rejected from its metadata before any tensor is read.

    Args:
        path: A ``ddsec.distilled/1`` or ``/2`` safetensors file.

    Returns:
        The set, tensors on the CPU: ``images`` float32 ``[S, N, C, H, W]``, ``labels`` int64
        ``[S, N]`` or float32 ``[S, N, K]``, ``lrs`` float32 ``[T]``, ``momenta`` float32 ``[T]``
        (version-2 files) or ``None``.

    Raises:
        FormatError: The file is missing, unreadable, truncated, foreign, of a newer format
            version, or inconsistent; the one-line message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(f"distilled set not found: {path}")
    if not path.is_file():
        raise FormatError(f"{path} is not a file")
    raw, tensors = _read(path)
    try:
        meta, steps = _meta_from_strings(raw)
        dset = DistilledSet(meta=meta, **tensors)
        _check_set(dset)
        if steps != dset.steps:
            raise _Problem(f"metadata 'steps' is {steps} but images have {dset.steps} steps")
    except _Problem as exc:
        raise FormatError(f"{path}: {exc}") from None
    return dset


# --------------------------------------------------------------------------------------------
# PNG grids
# --------------------------------------------------------------------------------------------


def _denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Map normalised images ``[..., C, H, W]`` back to pixels, clamped to ``[0, 1]``."""
    channels = images.shape[-3]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} entries, got {len(mean)} and {len(std)}")
    shape = (channels, 1, 1)
    mean_t = torch.tensor(list(mean), dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.tensor(list(std), dtype=images.dtype, device=images.device).view(shape)
    pixels = torch.nan_to_num(images * std_t + mean_t, nan=0.0, posinf=1.0, neginf=0.0)
    return pixels.clamp(0.0, 1.0)


def _grid_array(images: Tensor, pad: int, scale: int) -> np.ndarray:
    """Lay out ``[S, N, C, H, W]`` pixels in ``[0, 1]`` as a uint8 grid (white padding)."""
    steps, per_step, channels = images.shape[:3]
    if scale > 1:
        images = images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    cells = F.pad(images, (pad, 0, pad, 0), value=1.0)  # top and left border of each cell
    height, width = cells.shape[-2:]
    grid = cells.permute(0, 3, 1, 4, 2).reshape(steps * height, per_step * width, channels)
    grid = F.pad(grid, (0, 0, 0, pad, 0, pad), value=1.0)  # bottom and right border
    array = (grid * 255.0).round().to(torch.uint8).cpu().numpy()
    return array[..., 0] if channels == 1 else array


def save_grid_png(
    path: str | os.PathLike[str],
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    pad: int = 2,
    scale: int = 1,
) -> Path:
    """Save distilled images as one PNG grid: one row per step, one column per image.

    Images are de-normalised (``x * std + mean``), clamped to ``[0, 1]`` and optionally enlarged
    ``scale`` times (nearest neighbour). Cells are separated and surrounded by ``pad`` white
    pixels, so the PNG is ``N*W*scale + (N+1)*pad`` wide and ``S*H*scale + (S+1)*pad`` high.
    The file is written atomically; parent directories are created.

    Args:
        path: Destination ``.png`` file.
        images: float ``[S, N, C, H, W]`` in normalised space, ``C`` 1 (grey) or 3 (RGB).
        mean: Per-channel normalisation mean, length ``C``.
        std: Per-channel normalisation std, length ``C``.
        pad: Padding in pixels (>= 0).
        scale: Integer upscale factor (>= 1).

    Returns:
        The destination path.

    Raises:
        ValueError: Bad shape, channel count, ``pad`` or ``scale``.
    """
    if not isinstance(images, Tensor) or images.dim() != 5 or images.shape[2] not in (1, 3):
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [S, N, C, H, W] with C in (1, 3), got {shape}")
    if not _is_int(pad) or pad < 0:
        raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
    if not _is_int(scale) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    pixels = _denormalize(images.detach().float(), mean, std)
    picture = Image.fromarray(_grid_array(pixels, pad, scale))
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
