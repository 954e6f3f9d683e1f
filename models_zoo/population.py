"""Stored populations of models: one safetensors file of stacked parameters.

The paper's attack and adaptation experiments (Wang et al., arXiv 1811.10959, §3.4–3.5) sample
initial weights from populations of pretrained networks and evaluate on held-out ones. A
population file holds every parameter with a leading model dimension ``[P, …]`` (as from
``torch.func.stack_module_state``) and string metadata: ``format`` (``ddsec.population/1``),
``model``, ``dataset``, ``count``, ``num_classes``, ``in_chans``, ``image_size``, and JSON lists
``seeds`` and ``test_acc`` (one entry per model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddsec._io import atomic_path
from ddsec.errors import DDSecError, FormatError

POPULATION_FORMAT = "ddsec.population/1"
_REQUIRED = ("model", "dataset", "count", "num_classes", "in_chans", "image_size", "seeds", "test_acc")


def save_population(
    path: str | Path,
    params: Mapping[str, Tensor],
    *,
    model: str,
    dataset: str,
    num_classes: int,
    in_chans: int,
    image_size: int,
    seeds: Sequence[int],
    test_acc: Sequence[float],
) -> Path:
    """Write a population atomically.

    Args:
        params: name → float ``[P, …]`` stacked parameters.
        seeds: the ``P`` training seeds (held-out populations must use disjoint ones).
        test_acc: the ``P`` test accuracies, fractions in [0, 1].
    """
    count = next(iter(params.values())).shape[0]
    if len(seeds) != count or len(test_acc) != count:
        raise ValueError(f"need {count} seeds and accuracies, got {len(seeds)} and {len(test_acc)}")
    metadata = {
        "format": POPULATION_FORMAT, "model": model, "dataset": dataset, "count": str(count),
        "num_classes": str(num_classes), "in_chans": str(in_chans), "image_size": str(image_size),
        "seeds": json.dumps([int(s) for s in seeds]), "test_acc": json.dumps([float(a) for a in test_acc]),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in params.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def population_metadata(path: str | Path) -> dict:
    """The metadata of a population file (``count`` etc. as ints, ``seeds``/``test_acc`` as lists).

    Raises:
        DDSecError: missing file; FormatError: unreadable or not a population.
    """
    path = Path(path)
    if not path.is_file():
        raise DDSecError(f"population file {path} does not exist; train one with `ddsec zoo train` or fix the path")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"{path} is not a readable safetensors file ({exc})") from None
    if meta.get("format") != POPULATION_FORMAT or any(k not in meta for k in _REQUIRED):
        raise FormatError(f"{path} is not a ddsec population (format {meta.get('format')!r})")
    try:
        out: dict = {k: meta[k] for k in ("model", "dataset")}
        out.update({k: int(meta[k]) for k in ("count", "num_classes", "in_chans", "image_size")})
        out.update({k: json.loads(meta[k]) for k in ("seeds", "test_acc")})
    except ValueError as exc:
        raise FormatError(f"{path} has malformed population metadata ({exc})") from None
    return out


def load_population(
    path: str | Path, *, model: str | None = None, dataset: str | None = None, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """Read a population's stacked parameters, checking that it is for ``model`` / ``dataset``.

    Returns:
        name → ``[P, …]`` tensors on ``device``.
    """
    meta = population_metadata(path)
    for key, wanted in (("model", model), ("dataset", dataset)):
        if wanted is not None and meta[key] != wanted:
            raise DDSecError(f"population {path} holds {meta['model']} models trained on {meta['dataset']};"
                             f" this run needs {key} {wanted!r}")
    try:
        params = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"{path} is truncated or corrupt ({exc})") from None
    if any(v.shape[0] != meta["count"] for v in params.values()):
        raise FormatError(f"{path}: tensors do not all hold {meta['count']} models")
    return params
