"""Stored populations of models: stacked parameters in safetensors files or sharded folders.

The paper's attack and adaptation experiments (Wang et al., arXiv 1811.10959, §3.4–3.5) sample
initial weights from populations of pretrained networks and evaluate on held-out ones. A
population file holds every parameter with a leading model dimension ``[P, …]`` (as from
``torch.func.stack_module_state``) and string metadata: ``format`` (``ddsec.population/1``),
``model``, ``dataset``, ``count``, ``num_classes``, ``in_chans``, ``image_size``, and JSON lists
``seeds`` and ``test_acc`` (one entry per model). Optional keys: ``recipe`` (JSON of the
training settings) and ``total`` (the number of models the whole population will hold).

A population may also be a *folder of shards* ``shard-00000.safetensors``, ``shard-00001…``,
each a population file as above, written as training proceeds (so a killed run keeps its
finished shards). Reading a folder concatenates its shards in order; their metadata must agree,
and when the shards carry ``total`` the folder must hold exactly that many models.
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
SHARD_GLOB = "shard-*.safetensors"
_REQUIRED = ("model", "dataset", "count", "num_classes", "in_chans", "image_size", "seeds", "test_acc")
_SHARED = ("model", "dataset", "num_classes", "in_chans", "image_size", "recipe", "total")


def shard_name(index: int) -> str:
    """File name of shard ``index`` inside a population folder."""
    return f"shard-{index:05d}.safetensors"


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
    recipe: Mapping | None = None,
    total: int | None = None,
) -> Path:
    """Write a population file (or one shard of a population folder) atomically.

    Args:
        params: name → float ``[P, …]`` stacked parameters.
        seeds: the ``P`` training seeds (held-out populations must use disjoint ones).
        test_acc: the ``P`` test accuracies, fractions in [0, 1].
        recipe: the training settings, stored as JSON.
        total: for a shard, the size of the whole population.
    """
    count = next(iter(params.values())).shape[0]
    if len(seeds) != count or len(test_acc) != count:
        raise ValueError(f"need {count} seeds and accuracies, got {len(seeds)} and {len(test_acc)}")
    metadata = {
        "format": POPULATION_FORMAT, "model": model, "dataset": dataset, "count": str(count),
        "num_classes": str(num_classes), "in_chans": str(in_chans), "image_size": str(image_size),
        "seeds": json.dumps([int(s) for s in seeds]), "test_acc": json.dumps([float(a) for a in test_acc]),
    }
    if recipe is not None:
        metadata["recipe"] = json.dumps(dict(recipe), sort_keys=True)
    if total is not None:
        metadata["total"] = str(total)
    tensors = {k: v.detach().cpu().contiguous() for k, v in params.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def population_files(path: str | Path) -> list[Path]:
    """The files of a population: ``[path]`` for a file, the sorted shards for a folder.

    Raises:
        DDSecError: nothing there, or a folder without shards.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        shards = sorted(path.glob(SHARD_GLOB))
        if shards:
            return shards
        raise DDSecError(f"population folder {path} holds no {SHARD_GLOB} files; train one with `ddsec zoo train`")
    raise DDSecError(f"population {path} does not exist; train one with `ddsec zoo train` or fix the path")


def _file_metadata(path: Path) -> dict:
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
        out["recipe"] = json.loads(meta["recipe"]) if "recipe" in meta else None
        out["total"] = int(meta["total"]) if "total" in meta else None
    except ValueError as exc:
        raise FormatError(f"{path} has malformed population metadata ({exc})") from None
    if len(out["seeds"]) != out["count"] or len(out["test_acc"]) != out["count"]:
        raise FormatError(f"{path}: metadata lists do not hold {out['count']} entries")
    return out


def population_metadata(path: str | Path, *, complete: bool = True) -> dict:
    """The metadata of a population file or folder.

    ``count``, ``num_classes``, ``in_chans``, ``image_size`` (and ``total`` when stored) are
    ints; ``seeds`` and ``test_acc`` lists over all models; ``recipe`` a dict or ``None``;
    ``shards`` the number of files.

    Args:
        complete: raise if a folder holds fewer models than its ``total`` (an unfinished run);
            a single shard file is read as it is.

    Raises:
        DDSecError: missing, or incomplete; FormatError: unreadable, not a population, or
        shards that disagree.
    """
    files = population_files(path)
    metas = [_file_metadata(f) for f in files]
    out = dict(metas[0])
    for file, meta in zip(files[1:], metas[1:]):
        differs = [k for k in _SHARED if meta[k] != out[k]]
        if differs:
            raise FormatError(f"{file} does not match the other shards of {path} in {', '.join(differs)}")
        out["count"] += meta["count"]
        out["seeds"] = out["seeds"] + meta["seeds"]
        out["test_acc"] = out["test_acc"] + meta["test_acc"]
    out["shards"] = len(files)
    if complete and Path(path).is_dir() and out["total"] is not None and out["count"] != out["total"]:
        raise DDSecError(f"population {path} is unfinished ({out['count']} of {out['total']} models);"
                         " run the same `ddsec zoo train` command again to complete it")
    return out


def load_population(
    path: str | Path,
    *,
    model: str | None = None,
    dataset: str | None = None,
    device: torch.device | str = "cpu",
    share: tuple[int, int] = (0, 1),
) -> dict[str, Tensor]:
    """Read a population's stacked parameters, checking that it is for ``model`` / ``dataset``.

    Args:
        path: a population file or a folder of shards.
        share: ``(rank, size)``: keep only models ``rank, rank + size, …`` (one process's share
            in a distributed run), reading shard by shard so no process holds the whole population.

    Returns:
        name → ``[P, …]`` tensors on ``device`` (``P`` counts this share's models).
    """
    meta = population_metadata(path)
    for key, wanted in (("model", model), ("dataset", dataset)):
        if wanted is not None and meta[key] != wanted:
            raise DDSecError(f"population {path} holds {meta['model']} models trained on {meta['dataset']};"
                             f" this run needs {key} {wanted!r}")
    rank, size = share
    if not 0 <= rank < size or size > meta["count"]:
        raise DDSecError(f"population {path} has {meta['count']} models, too few to share among {size} processes")
    parts, offset = [], 0
    for file in population_files(path):
        try:
            part = load_file(str(file), device=str(device))
        except (SafetensorError, OSError, ValueError) as exc:
            raise FormatError(f"{file} is truncated or corrupt ({exc})") from None
        counts = {v.shape[0] for v in part.values()}
        if len(counts) != 1:
            raise FormatError(f"{file}: its tensors hold different numbers of models")
        count = counts.pop()
        mine = [i - offset for i in range(offset, offset + count) if i % size == rank]
        parts.append(part if size == 1 else {k: v[mine] for k, v in part.items()})
        offset += count
    if any(part.keys() != parts[0].keys() for part in parts):
        raise FormatError(f"the shards of {path} hold different parameter names")
    if offset != meta["count"]:
        raise FormatError(f"{path}: tensors do not all hold {meta['count']} models")
    return {k: torch.cat([part[k] for part in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
