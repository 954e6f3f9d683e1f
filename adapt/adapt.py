"""Few-shot domain adaptation with distilled target images (``ddsec adapt``).

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §3.5 and Table 2: learn ``S`` step
batches of *target-domain* images and their step sizes such that ``T`` SGD steps on them move a
model pretrained on the *source* domain to high accuracy on the target domain. The outer
objective is cross-entropy on real target training batches; ``θ0`` is either one fixed
pretrained source model (``--init fixed``, evaluated on that model) or random draws from a
population of source models (``--init population``, evaluated on held-out source models never
seen while distilling). Each domain keeps its own normalisation statistics, as a user's
pipeline would.

``usps-pooled`` is USPS with both official splits pooled and re-split 80/20 at random, the kind
of split the paper's Table 2 used (its test split is easier than the official one).

Digit pairs share one input shape: 28 px grey for MNIST ↔ USPS, 32 px RGB whenever SVHN is
involved (MNIST and USPS then repeated to 3 channels, as the reference did). Upsampled USPS
digits are framed like MNIST's (a 20/28 box centred on background), so both domains show digits
of one size. The ImageNet source (``--src imagenet --tgt voc|cub``) is one fixed AlexNet read
from ``--weights`` (:mod:`ddsec.adapt.imagenet`), at 224 px by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ddsec.data import ImageDataset, dataset_info, load_dataset, usps_framed
from ddsec.distill import DistillConfig, DistillJob, build_model, fit_to_populations, resolve_device
from ddsec.engine import FixedInit, PopulationInit, select, world
from ddsec.adapt.imagenet import IMAGENET_SIZE, IMAGENET_TARGETS, imagenet_alexnet, require_weights
from ddsec.errors import DDSecError
from ddsec.models_zoo import load_population, load_weights
from ddsec.models_zoo.train import TrainRecipe, population_accuracy, train_group
from ddsec.models_zoo.zoo import check_fits, entry_name, resolve_pair

DIGIT_DOMAINS = ("mnist", "usps", "usps-pooled", "svhn")
ADAPT_INITS = ("population", "fixed")


def _domain(name: str) -> str:
    """The domain a digit dataset belongs to: ``usps-pooled`` is USPS re-split."""
    return "usps" if name == "usps-pooled" else name


def pair_shape(source: str, target: str, image_size: int | None = None) -> tuple[int, int]:
    """``(image_size, channels)`` of a pair: ImageNet 224 px RGB (or ``image_size``); digits: 32 px
    RGB with SVHN, else 28 px grey."""
    if source == "imagenet":
        return image_size or IMAGENET_SIZE, 3
    return (32, 3) if "svhn" in (source, target) else (28, 1)


def pair_defaults(source: str) -> dict:
    """The paper's settings per source: ImageNet 1 step × 3 epochs, fixed model; digits 10 × 3, population."""
    if source == "imagenet":
        return {"steps": 1, "epochs": 3, "init": "fixed", "model": "alexnet"}
    return {"steps": 10, "epochs": 3, "init": "population", "model": "lenet"}


def source_entry(source: str, model: str, image_size: int, channels: int) -> str:
    """The zoo name of the source population, e.g. ``mnist-lenet``, ``mnist-lenet-32px3c`` or
    ``usps-lenet-28px1c-framed`` (USPS larger than 16 px is framed like MNIST)."""
    info = dataset_info(source)
    if (image_size, channels) == (info.image_size, info.channels):
        return entry_name(source, model)
    framed = "-framed" if _domain(source) == "usps" and usps_framed(image_size) else ""
    return f"{entry_name(source, model)}-{image_size}px{channels}c{framed}"


@dataclass(frozen=True)
class AdaptConfig(DistillConfig):
    """Every setting of one ``ddsec adapt`` run: the ``distill`` settings plus the domains.

    ``dataset`` is ignored (the target domain ``tgt`` is distilled); ``population`` and
    ``heldout_population`` name zoo entries or paths (default: the source entry, trained on
    first use); ``weights`` gives the fixed model of ``--init fixed`` (default: the first model
    of the source population).
    """

    src: str = "mnist"
    tgt: str = "usps"
    init: str = "population"
    zoo: str | None = None
    image_size: int | None = None
    RUNTIME: ClassVar[tuple[str, ...]] = (*DistillConfig.RUNTIME, "zoo")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in ADAPT_INITS:
            raise DDSecError(f"--init must be population or fixed for adaptation, got {self.init!r}")
        if self.src == "imagenet":
            if self.tgt not in IMAGENET_TARGETS or self.init != "fixed" or self.model != "alexnet":
                raise DDSecError(f"--src imagenet adapts one fixed alexnet to --tgt {' or '.join(IMAGENET_TARGETS)}"
                                 f" (--init fixed), got --tgt {self.tgt} --init {self.init} --model {self.model}")
            return
        for flag, domain in (("--src", self.src), ("--tgt", self.tgt)):
            if domain not in DIGIT_DOMAINS:
                raise DDSecError(f"{flag} must be imagenet or one of {', '.join(DIGIT_DOMAINS)}, got {domain!r}")
        if _domain(self.src) == _domain(self.tgt):
            raise DDSecError(f"--src {self.src} and --tgt {self.tgt} are the same domain ({_domain(self.src)});"
                             " adaptation needs two domains")


def _source_paths(cfg: AdaptConfig, image_size: int, channels: int,
                  train_entry: Callable[[str, int, int], None] | None) -> tuple[str, str]:
    default = source_entry(cfg.src, cfg.model, image_size, channels)
    train, heldout = resolve_pair(
        cfg.population, cfg.heldout_population, default=default, root=cfg.zoo,
        train_default=None if train_entry is None else (lambda: train_entry(default, image_size, channels)),
        how_to_train=f"ddsec zoo train --dataset {cfg.src} --model {cfg.model} --image-size {image_size}"
                     f" --channels {channels} --name {default}",
    )
    return str(train), str(heldout)


def _load_source(path: str, cfg: AdaptConfig, data: ImageDataset, device: torch.device,
                 share: tuple[int, int] = (0, 1)) -> dict[str, Tensor]:
    check_fits(path, data, dataset=cfg.src, model=cfg.model, purpose="this pair's source models")
    return load_population(path, device=device, share=share)


def prepare_adapt(cfg: AdaptConfig, train_entry: Callable[[str, int, int], None] | None = None) -> DistillJob:
    """Load both domains' data and the source models; fails fast with one clear line.

    Args:
        train_entry: called as ``train_entry(name, image_size, channels)`` to train the default
            source population when the zoo lacks it.

    Returns:
        A job whose data is the target domain and whose ``p(θ0)`` are source models.
    """
    size, channels = pair_shape(cfg.src, cfg.tgt, cfg.image_size)
    device = resolve_device(cfg.device)
    shape = dict(root=cfg.data_dir, download=cfg.download, image_size=size, channels=channels)
    if cfg.src == "imagenet":
        require_weights(cfg.weights)  # before the (large) datasets are read
        train, test = load_dataset(cfg.tgt, train=True, **shape), load_dataset(cfg.tgt, train=False, **shape)
        model = imagenet_alexnet(cfg.weights, train.num_classes, size).to(device)
        fixed = FixedInit(dict(model.named_parameters()), kind="pretrained")
        base = DistillConfig(**{k: v for k, v in asdict(cfg).items() if k in DistillConfig.__dataclass_fields__}
                             | {"dataset": cfg.tgt, "model": "alexnet"})
        return fit_to_populations(DistillJob(base, train, test, model, fixed, fixed, device, _fingerprint(cfg, base)),
                                  cfg.EVAL_MODELS)
    train, test = load_dataset(cfg.tgt, train=True, **shape), load_dataset(cfg.tgt, train=False, **shape)
    train_path, heldout_path = _source_paths(cfg, size, channels, train_entry)
    model = build_model(cfg.model, train).to(device)
    here = world()  # in a distributed run each process samples from its own share of the sources
    source = _load_source(train_path, cfg, train, device, share=(0, 1) if cfg.init == "fixed" else (here.rank, here.size))
    if cfg.init == "fixed":
        one = load_weights(model, cfg.weights) if cfg.weights else None
        params = dict(one.named_parameters()) if one is not None else select(source, 0)
        init = heldout = FixedInit(params, kind="pretrained")
    else:
        init, heldout = PopulationInit(source), PopulationInit(_load_source(heldout_path, cfg, train, device))
    base = DistillConfig(**{k: v for k, v in asdict(cfg).items() if k in DistillConfig.__dataclass_fields__}
                         | {"dataset": cfg.tgt, "init": cfg.init,
                            "population": train_path, "heldout_population": heldout_path})
    return fit_to_populations(DistillJob(base, train, test, model, init, heldout, device, _fingerprint(cfg, base)),
                              cfg.EVAL_MODELS)


def _fingerprint(cfg: AdaptConfig, base: DistillConfig) -> dict:
    """What a checkpoint must match: the pair (``src``, ``tgt``) and the engine settings with
    the resolved source populations."""
    return {**cfg.fingerprint(), **base.fingerprint()}


def adapt_meta(cfg: AdaptConfig, job: DistillJob) -> dict:
    """Metadata overrides of an exported adaptation set (``job``: from :func:`prepare_adapt`, whose
    held-out model count is the one evaluated)."""
    return {"task": "adapt", "source": cfg.src, "target": cfg.tgt, "dataset": cfg.tgt, "init": cfg.init,
            "config": asdict(cfg) | {"eval_models": job.cfg.eval_models}}


def finetune_reference(job: DistillJob, *, n_models: int, recipe: TrainRecipe, seed: int = 0) -> Tensor:
    """Target test accuracy after fine-tuning held-out source models on the *whole* target training set.

    The upper reference of Table 2: every target training image, ``recipe.steps`` Adam steps.

    Returns:
        float ``[n]`` accuracies, ``n = min(n_models, held-out models)`` (1 for a fixed init).
    """
    size = getattr(job.heldout, "size", 1)
    start = job.heldout.sample(min(n_models, size), torch.Generator().manual_seed(seed))
    start = {k: v.contiguous() for k, v in start.items()}
    count = next(iter(start.values())).shape[0]
    tuned = train_group(job.model, job.train, list(range(seed, seed + count)), recipe.for_dataset(len(job.train)),
                        start=start)
    return population_accuracy(job.model, tuned, job.test)
