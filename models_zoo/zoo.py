"""The local zoo of trained populations: where they live, how they are named, how they are built.

A zoo entry is a folder ``<zoo root>/<name>/`` with two populations of the same architecture
and recipe: ``train/`` (sampled as ``p(θ0)`` while distilling) and ``heldout/`` (only for
evaluation). The two use disjoint seeds — training models get ``seed + i``, held-out models
``HELDOUT_SEED_OFFSET + seed + i`` — so no held-out model shares an init or a data order with a
training one. Each population is a folder of shards written one group of models at a time, so
a killed run resumes at the first missing shard.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ddsec.data import ImageDataset, load_dataset
from ddsec.engine.distributed import barrier, my_share
from ddsec.errors import DDSecError
from ddsec.models_zoo.population import SHARD_GLOB, population_metadata, save_population, shard_name
from ddsec.models_zoo.registry import create_model
from ddsec.models_zoo.train import TrainRecipe, population_accuracy, train_group

ZOO_ENV = "DDSEC_ZOO"
"""Environment variable naming the zoo root."""
ROLES = ("train", "heldout")
HELDOUT_SEED_OFFSET = 1_000_000
"""Held-out seeds start here, far from any training population's seeds."""
AUTO_COUNT, AUTO_HELDOUT = 40, 10
"""Sizes of a default population that ``poison`` or ``adapt`` trains on first use."""

Report = Callable[[int, int], None]


def zoo_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The zoo folder: ``root``, else ``$DDSEC_ZOO``, else ``$XDG_CACHE_HOME/ddsec/zoo`` or ``~/.cache/ddsec/zoo``."""
    if root:
        return Path(root).expanduser()
    if os.environ.get(ZOO_ENV):
        return Path(os.environ[ZOO_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "ddsec" / "zoo"


def entry_name(dataset: str, model: str) -> str:
    """The default zoo name of a population pair, e.g. ``mnist-lenet`` (``mnist-timm-resnet10t`` for
    ``timm/resnet10t``: one folder, no ``/``)."""
    return f"{dataset}-{model.replace('/', '-')}"


def population_seeds(role: str, count: int, seed: int = 0) -> list[int]:
    """The ``count`` seeds of the ``train`` or ``heldout`` population of a zoo entry."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    base = seed if role == "train" else HELDOUT_SEED_OFFSET + seed
    return list(range(base, base + count))


def resolve_population(spec: str | os.PathLike[str], role: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Turn ``--population`` / ``--heldout`` into a population path.

    ``spec`` is a population file, a shard folder, a zoo entry folder (its ``role`` part is
    taken) or the name of an entry in the zoo.

    Raises:
        DDSecError: none of these exists.
    """
    path = Path(spec).expanduser()
    for candidate in (path, zoo_root(root) / str(spec)):
        if (candidate / role).is_dir():
            return candidate / role
        if candidate.is_file() or (candidate.is_dir() and any(candidate.glob(SHARD_GLOB))):
            return candidate
    raise DDSecError(f"no population {str(spec)!r}: not a file or folder, and not an entry of the zoo at"
                     f" {zoo_root(root)} (see `ddsec zoo list`; build one with `ddsec zoo train`)")


def resolve_pair(
    population: str | None,
    heldout: str | None,
    *,
    default: str,
    root: str | os.PathLike[str] | None,
    train_default: Callable[[], None] | None,
    how_to_train: str,
) -> tuple[Path, Path]:
    """The ``(train, heldout)`` population paths of a run that samples ``θ0`` from the zoo.

    Args:
        population, heldout: ``--population`` / ``--heldout`` (see :func:`resolve_population`);
            ``None`` means the zoo entry ``default``.
        train_default: trains the entry ``default`` when it is missing (``None``: that is an error).
        how_to_train: the ``ddsec zoo train …`` command the error message suggests.

    Raises:
        DDSecError: a missing population, or the same population for training and evaluation.
    """
    spec = population or default
    if population is None and not (zoo_root(root) / spec / "train").is_dir():
        if train_default is None:
            raise DDSecError(f"no population {spec!r} in the zoo at {zoo_root(root)}; train one with `{how_to_train}`")
        train_default()
    train = resolve_population(spec, "train", root)
    held = resolve_population(heldout or spec, "heldout", root)
    if train.resolve() == held.resolve():
        raise DDSecError(f"--population and --heldout are the same population ({train}); evaluate on held-out models")
    return train, held


def train_population(
    folder: str | os.PathLike[str],
    *,
    model: nn.Module,
    model_name: str,
    train: ImageDataset,
    test: ImageDataset,
    seeds: Sequence[int],
    recipe: TrainRecipe,
    group: int = 10,
    batching: str = "auto",
    on_progress: Report | None = None,
) -> dict:
    """Train the models of ``seeds`` group by group into ``folder``, skipping finished shards.

    In a distributed run each rank trains and writes the shards ``rank, rank + size, …``; the
    files are the same as one process would write.

    Args:
        folder: the population folder (created).
        model: the architecture, on the device to train on.
        model_name: its registry name (stored in the metadata).
        train: training split; test: split for the per-model test accuracy.
        seeds: one per model.
        recipe: the training settings.
        group: models trained together and written as one shard.
        batching: how a group's models run (``auto``: vmap on GPU, loop on CPU).
        on_progress: called with ``(optimizer steps done, steps in total)`` over this process's models.

    Returns:
        The population's metadata (see :func:`population_metadata`).

    Raises:
        DDSecError: ``folder`` holds shards of another population (other seeds or recipe).
    """
    if group < 1:
        raise DDSecError(f"--group must be at least 1, got {group}")
    folder = Path(folder)
    chunks = [list(seeds[i : i + group]) for i in range(0, len(seeds), group)]
    stray = sorted(set(folder.glob(SHARD_GLOB)) - {folder / shard_name(i) for i in range(len(chunks))})
    if stray:
        raise DDSecError(f"{folder} holds shards of a different population ({stray[0].name});"
                         " pass another --name or remove the folder")
    barrier()  # no rank writes a shard before every rank has checked the folder
    mine = set(my_share(len(chunks)))
    total_steps, done = sum(len(chunks[i]) for i in mine) * recipe.steps, 0
    channels, size, _ = train.image_shape
    for index, chunk in enumerate(chunks):
        if index not in mine:
            continue
        path = folder / shard_name(index)
        if path.exists():
            _check_shard(path, chunk, recipe, model_name, train.name)
        else:
            def step(s: int, base: int = done, width: int = len(chunk)) -> None:
                if on_progress is not None:
                    on_progress(base + s * width, total_steps)

            params = train_group(model, train, chunk, recipe, batching=batching, on_step=step)
            accuracy = population_accuracy(model, params, test)
            save_population(path, params, model=model_name, dataset=train.name, num_classes=train.num_classes,
                            in_chans=channels, image_size=size, seeds=chunk, test_acc=accuracy.tolist(),
                            recipe=recipe.as_dict(), total=len(seeds))
        done += len(chunk) * recipe.steps
        if on_progress is not None:
            on_progress(done, total_steps)
    barrier()  # every shard is written before anyone reads the population
    return population_metadata(folder)


def _check_shard(path: Path, seeds: list[int], recipe: TrainRecipe, model_name: str, dataset: str) -> None:
    meta = population_metadata(path)
    same = (meta["seeds"] == seeds and meta["recipe"] == recipe.as_dict()
            and meta["model"] == model_name and meta["dataset"] == dataset)
    if not same:
        raise DDSecError(f"{path} was trained with other seeds, recipe, model or dataset;"
                         " pass another --name or remove that folder")


def list_populations(root: str | os.PathLike[str] | None = None) -> list[dict]:
    """Every population in the zoo: one dict per ``(entry, role)`` with its metadata and ``name``, ``role``, ``path``."""
    base = zoo_root(root)
    rows = []
    for entry in sorted(p for p in base.glob("*") if p.is_dir()) if base.is_dir() else []:
        for role in ROLES:
            folder = entry / role
            if folder.is_dir() and any(folder.glob(SHARD_GLOB)):
                rows.append({"name": entry.name, "role": role, "path": str(folder),
                             **population_metadata(folder, complete=False)})
    return rows


def check_fits(path: str | os.PathLike[str], data: ImageDataset, *, dataset: str, model: str | None,
               purpose: str) -> dict:
    """The metadata of population ``path`` after checking that its models take ``data``'s images.

    Args:
        data: the images the models will see (classes, channels and size must match).
        dataset: the dataset the models must have been trained on (the source domain for adapt).
        model: the required architecture, or ``None`` for any (transfer evaluation).
        purpose: ends the error message, e.g. ``"this attack"``.

    Raises:
        DDSecError: one line naming every mismatch.
    """
    meta = population_metadata(path)
    channels, size, _ = data.image_shape
    wrong = [f"{key} {meta[key]!r} (need {want!r})" for key, want in
             (("dataset", dataset), ("model", model), ("num_classes", data.num_classes),
              ("in_chans", channels), ("image_size", size)) if want is not None and meta[key] != want]
    if wrong:
        raise DDSecError(f"population {path} does not fit {purpose}: {', '.join(wrong)}")
    return meta


def mean_accuracy(meta: dict) -> float:
    """Mean test accuracy of a population's models."""
    return statistics.fmean(meta["test_acc"])


def train_entry(
    name: str,
    *,
    dataset: str,
    model_name: str,
    count: int,
    heldout: int,
    recipe: TrainRecipe | None = None,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    data_dir: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
    device: torch.device | str = "cpu",
    group: int = 10,
    batching: str = "auto",
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict]:
    """Train (or finish) the ``train`` and ``heldout`` populations of zoo entry ``name``.

    Args:
        recipe: training settings (``None``: the defaults); steps default to
            :func:`~ddsec.models_zoo.train.default_steps` for this dataset.
        download: let torchvision fetch a missing dataset.
        image_size, channels: bring the dataset to this shape (``None``: its own).
        on_progress: called with ``(role, steps done, steps in total)``.

    Returns:
        role → the population's metadata.
    """
    for flag, value in (("--count", count), ("--heldout", heldout)):
        if value < 1:
            raise DDSecError(f"{flag} must be at least 1, got {value}")
    shape = dict(root=data_dir, download=download, image_size=image_size, channels=channels)
    train, test = load_dataset(dataset, train=True, **shape), load_dataset(dataset, train=False, **shape)
    recipe = (recipe or TrainRecipe()).for_dataset(len(train))
    c, size, _ = train.image_shape
    model = create_model(model_name, num_classes=train.num_classes, in_chans=c, image_size=size).to(device)
    metas = {}
    for role, n in (("train", count), ("heldout", heldout)):
        report = None if on_progress is None else (lambda done, total, role=role: on_progress(role, done, total))
        metas[role] = train_population(
            zoo_root(root) / name / role, model=model, model_name=model_name, train=train, test=test,
            seeds=population_seeds(role, n, seed), recipe=recipe, group=group, batching=batching, on_progress=report,
        )
    return metas
