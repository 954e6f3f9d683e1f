"""A whole condensation run: data, model and batch sampler, the loop, the evaluation, the export.

Builds what :mod:`ddsec.condense.gradient_matching` (DC, DSA) or
:mod:`ddsec.condense.distribution_matching` (DM) need from a :class:`CondenseConfig`, runs
:func:`ddsec.condense.loop.condense`, evaluates the result with the train-epochs protocol on
fresh random inits, and packs it as a one-step distilled set (labels per image, the network
learning rate as nominal step size) so that every ``ddsec`` command reads it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ddsec.budget import planner
from ddsec.data.summaries import real_images_per_class
from ddsec.condense.config import CondenseConfig
from ddsec.condense.distribution_matching import distribution_matching_step
from ddsec.features import check_layer, features
from ddsec.condense.gradient_matching import gradient_matching_step
from ddsec.condense.loop import CondenseProgress, ImageSGD, MatchingStep, condense
from ddsec.condense.problem import Matching
from ddsec.condense.protocol import evaluate_set
from ddsec.condense.sampling import BatchSampler, ClusterBatches, RandomBatches, cached_clusters, kmeans_clusters
from ddsec.data import ImageDataset, load_dataset
from ddsec.distill import build_model, resolve_device
from ddsec.engine import DEFAULT_CHECKPOINT_SECONDS, RandomInit, class_major_labels, world
from ddsec.errors import DDSecError
from ddsec.evaluate import EpochRecipe, EvalResult
from ddsec.export import DistilledMeta, DistilledSet


@dataclass
class CondenseJob:
    """A run ready to start: data loaded, model, init and real-batch sampler built, inputs validated.

    Attributes:
        clusters_cached: with k-means batch sampling, whether the cluster assignment came from
            the cache file (``None`` without k-means).
    """

    cfg: CondenseConfig
    train: ImageDataset
    test: ImageDataset
    model: nn.Module
    init: RandomInit
    sampler: BatchSampler
    device: torch.device
    clusters_cached: bool | None = None


@dataclass
class CondenseOutcome:
    """What a run produced: the exported set, its evaluation, the loss history, the time taken."""

    distilled: DistilledSet
    evaluation: EvalResult
    losses: Tensor
    seconds: float


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def _pooled_features(model: nn.Module, images: Tensor, layer: str, batch: int = 1000) -> Tensor:
    params = {k: v.detach() for k, v in model.named_parameters()}
    return torch.cat([features(model, params, images[i : i + batch], layer).cpu()
                      for i in range(0, images.shape[0], batch)])


def _cluster_sampler(cfg: CondenseConfig, train: ImageDataset, images: Tensor, device: torch.device,
                     cache: Path | None) -> tuple[ClusterBatches, bool]:
    """k-means batch sampling: cluster each class once on the feature model's layer (cached)."""
    net = build_model(cfg.feature_arch, train, checkpoint=cfg.feature_model).to(device)
    check_layer(net, cfg.feature_layer)
    key = {"dataset": train.name, "images": len(train), "feature_arch": cfg.feature_arch,
           "feature_model": _file_digest(cfg.feature_model), "feature_layer": cfg.feature_layer,
           "clusters": cfg.clusters, "seed": cfg.seed}

    def compute() -> Tensor:
        pooled = _pooled_features(net, images, cfg.feature_layer)
        return kmeans_clusters(pooled, train.labels, train.num_classes, cfg.clusters, cfg.seed)

    assignment, cached = cached_clusters(cache, key, compute) if cache is not None else (compute(), False)
    return ClusterBatches(images, train.labels, assignment, train.num_classes, cfg.mix_after), cached


def prepare_condense(cfg: CondenseConfig, *, cluster_cache: str | Path | None = None) -> CondenseJob:
    """Load the data, build the model, the init and the batch sampler (fails fast on bad input).

    Args:
        cluster_cache: file caching the k-means assignment (``None``: always recompute).

    Raises:
        DDSecError: bad data or model options, or a ``torchrun`` launch (condensation is one process).
    """
    if world().size > 1:
        raise DDSecError(f"--method {cfg.method} runs in one process; launch it without torchrun")
    device = resolve_device(cfg.device)
    train = load_dataset(cfg.dataset, train=True, root=cfg.data_dir, download=cfg.download)
    test = load_dataset(cfg.dataset, train=False, root=cfg.data_dir, download=cfg.download)
    model = build_model(cfg.model, train).to(device)
    images = train.images.to(device)
    cached = None
    if cfg.batch_sampling == "kmeans":
        sampler, cached = _cluster_sampler(cfg, train, images, device, None if cluster_cache is None else Path(cluster_cache))
    else:
        sampler = RandomBatches(images, train.labels, train.num_classes)
    return CondenseJob(cfg, train, test, model, RandomInit(model, cfg.init_scheme), sampler, device, cached)


def build_step(job: CondenseJob) -> MatchingStep:
    """The method's outer iteration for ``job``."""
    cfg = job.cfg
    matching = Matching(job.model, job.init, job.sampler, ImageSGD(cfg.lr_img, cfg.momentum_img),
                        job.train.num_classes, cfg.ipc, cfg.batch_real, cfg.strategy)
    if cfg.method == "dm":
        return distribution_matching_step(matching)
    net_recipe = EpochRecipe(epochs=cfg.inner_loop, lr=cfg.lr_net, momentum=0.0, weight_decay=0.0,
                             batch_size=cfg.batch_train, decay=1.0)
    return gradient_matching_step(matching, outer_loop=cfg.outer_loop, net_recipe=net_recipe)


def initial_images(job: CondenseJob) -> Tensor:
    """Random real images of each class (``--image-init real``) or noise: float ``[K·ipc, C, H, W]``, class-major."""
    cfg, train = job.cfg, job.train
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.image_init == "real":
        images = real_images_per_class(train, cfg.ipc, 1, generator)[0]
    else:
        images = torch.randn(train.num_classes * cfg.ipc, *train.image_shape, generator=generator)
    return images.to(job.device)


def evaluate_images(job: CondenseJob, images: Tensor, *, n_models: int, epochs: int, seed: int,
                    on_model: Callable[[int, int], None] | None = None) -> EvalResult:
    """Train-epochs evaluation of images ``[K·ipc, C, H, W]`` on fresh inits, with ``cfg.eval_augment``."""
    cfg, train, test = job.cfg, job.train, job.test
    labels = class_major_labels(train.num_classes, cfg.ipc, 1).to(job.device)
    return evaluate_set(job.model, job.init, images.unsqueeze(0), labels, test, n_models=n_models, epochs=epochs,
                        augmentation=cfg.eval_augment, seed=seed, on_model=on_model)


def run_condense(
    job: CondenseJob,
    *,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    checkpoint_seconds: float | None = DEFAULT_CHECKPOINT_SECONDS,
    on_progress: Callable[[CondenseProgress], None] | None = None,
    on_eval: Callable[[int, int], None] | None = None,
) -> CondenseOutcome:
    """Condense, evaluate on fresh inits (train-epochs protocol) and build the exportable set.

    Args:
        job: from :func:`prepare_condense`.
        checkpoint_path: where the loop checkpoints (``None``: no checkpoints).
        resume: continue from ``checkpoint_path``.
        checkpoint_seconds: also checkpoint at least this often (wall-clock seconds).
        on_progress: called after every outer iteration.
        on_eval: called as ``on_eval(done, n_models)`` while evaluating.
    """
    cfg, train = job.cfg, job.train
    start = time.perf_counter()
    replan = None if cfg.budget is None else planner(cfg.budget, None)
    result = condense(build_step(job), initial_images(job), iterations=cfg.iterations, replan=replan, seed=cfg.seed,
                      fingerprint=cfg.fingerprint(), checkpoint_path=checkpoint_path, resume=resume,
                      checkpoint_every=cfg.checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                      on_progress=on_progress)
    seconds = time.perf_counter() - start
    if on_eval is not None:
        on_eval(0, cfg.eval_models)
    evaluation = evaluate_images(job, result.images, n_models=cfg.eval_models, epochs=cfg.eval_epochs,
                                 seed=cfg.seed + 1_000_003, on_model=on_eval)
    meta = DistilledMeta(task="distill", dataset=cfg.dataset, model=cfg.model, epochs=1, ipc=cfg.ipc, init="random",
                         mean=train.mean, std=train.std, seed=cfg.seed, num_classes=train.num_classes,
                         config=asdict(cfg) | ({"plan": result.plan} if result.plan else {}))
    labels = class_major_labels(train.num_classes, cfg.ipc, 1)
    distilled = DistilledSet(result.images.unsqueeze(0).detach(), labels, torch.tensor([cfg.lr_net]), meta)
    return CondenseOutcome(distilled, evaluation, result.losses, seconds)
