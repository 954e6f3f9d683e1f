"""Plain classification distillation, the base front end (``ddsec distill``).

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §3.1–3.2 and Table 1: learn ``S`` step
batches of ``classes × ipc`` images and ``T = S·E`` step sizes such that ``T`` SGD steps on them
train a network drawn from ``p(θ0)`` to classify the real test set. The outer objective is
cross-entropy on real training batches; the result is judged on held-out models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ddsec.budget import parse_duration
from ddsec.data import ImageDataset, load_dataset
from ddsec.data.summaries import average_images, kmeans_images, real_images_per_class
from ddsec.engine import (
    COMPILE_CHOICES,
    FIXED_KINDS,
    INIT_SCHEMES,
    MODES,
    ClassificationObjective,
    DistillResult,
    FixedInit,
    InitDistribution,
    PopulationInit,
    RandomInit,
    RealBatches,
    SyntheticSet,
    distinct_draws,
    world,
)
from ddsec.engine.segments import segment_length
from ddsec.errors import DDSecError
from ddsec.evaluate import EvalResult, evaluate_synthetic, heldout_count
from ddsec.export import DistilledMeta, DistilledSet
from ddsec.pipeline import Setup, run
from ddsec.models_zoo import create_model, load_population

INIT_KINDS = ("random", "fixed", "pretrained", "population")
IMAGE_INITS = ("real", "noise", "kmeans", "average")


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DDSecError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise DDSecError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


@dataclass(frozen=True)
class DistillConfig:
    """Every setting of one ``ddsec distill`` run; stored as JSON in the exported file.

    Validation raises :class:`DDSecError` naming the command-line option at fault.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    model: str = "lenet"
    steps: int = 10
    epochs: int = 3
    ipc: int = 1
    init: str = "random"
    init_scheme: str = "xavier"
    init_seed: int = 0
    weights: str | None = None
    population: str | None = None
    heldout_population: str | None = None
    n_models: int = 4
    iterations: int | None = 40  # None: chosen to fill `budget`
    budget: str | None = None  # e.g. "10m": the outer loop's time; used when iterations is None
    decay_fraction: float | None = None  # with a budget: halve the rates every this fraction of the run
    batch_size: int = 256
    lr: float = 0.05
    lr_step_sizes: float | None = None  # None: the same as lr
    distill_lr: float = 0.02
    decay_every: int | None = None
    decay_factor: float = 0.5
    mode: str = "hvp"
    keep_graphs: bool = False
    theta_every: int | str | None = None  # hvp: keep every k-th θ_t ("auto": ⌈√T⌉); None: all (not in the fingerprint)
    compile: str = "auto"  # hvp: compiled back-gradient pass, on | off | auto (on for CUDA); not in the fingerprint
    image_init: str = "real"
    learn_labels: bool = False
    momentum: float = 0.0  # 0: plain SGD (the paper); > 0: learned inner momentum starting there
    lr_momenta: float | None = None  # None: the same as lr_step_sizes (else lr)
    seed: int = 0
    device: str = "auto"
    eval_models: int | None = None  # None: up to EVAL_MODELS, a smaller held-out population whole, no note

    def __post_init__(self) -> None:
        if (self.iterations is None) == (self.budget is None):
            raise DDSecError("give either --iterations N or --budget DURATION (e.g. 10m)")
        if self.budget is not None:
            parse_duration(self.budget)
        if self.decay_fraction is not None and not 0 < self.decay_fraction < 1:
            raise DDSecError(f"--decay-fraction must lie in (0, 1), got {self.decay_fraction}")
        positive = {"--steps": self.steps, "--epochs": self.epochs, "--ipc": self.ipc,
                    "--n-models": self.n_models, "--iterations": 1 if self.iterations is None else self.iterations,
                    "--batch-size": self.batch_size,
                    "--eval-models": 1 if self.eval_models is None else self.eval_models}
        for flag, value in positive.items():
            if value < 1:
                raise DDSecError(f"{flag} must be at least 1, got {value}")
        rates = {"--lr": self.lr, "--distill-lr": self.distill_lr,
                 "--lr-step-sizes": self.lr if self.lr_step_sizes is None else self.lr_step_sizes,
                 "--lr-momenta": self.lr if self.lr_momenta is None else self.lr_momenta}
        for flag, value in rates.items():
            if not value > 0:
                raise DDSecError(f"{flag} must be positive, got {value}")
        if self.init not in INIT_KINDS:
            raise DDSecError(f"--init must be one of {', '.join(INIT_KINDS)}, got {self.init!r}")
        if self.init_scheme not in INIT_SCHEMES:
            raise DDSecError(f"--init-scheme must be one of {', '.join(INIT_SCHEMES)}, got {self.init_scheme!r}")
        if self.image_init not in IMAGE_INITS:
            raise DDSecError(f"--image-init must be one of {', '.join(IMAGE_INITS)}, got {self.image_init!r}")
        if self.mode not in MODES:
            raise DDSecError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.theta_every is not None and self.mode != "hvp":
            raise DDSecError("--theta-every applies to --mode hvp only")
        try:
            segment_length(self.theta_every, self.steps * self.epochs)
        except ValueError:
            raise DDSecError(f"--theta-every must be auto or a positive whole number, got {self.theta_every!r}") from None
        if self.compile not in COMPILE_CHOICES:
            raise DDSecError(f"--compile must be one of {', '.join(COMPILE_CHOICES)}, got {self.compile!r}")
        if self.compile == "on" and self.mode != "hvp":
            raise DDSecError("--compile on applies to --mode hvp only")
        if self.init == "pretrained" and not self.weights:
            raise DDSecError("--init pretrained needs --weights PATH (a .safetensors or .pth state dict)")
        if not 0 <= self.momentum < 1:
            raise DDSecError(f"--momentum must lie in [0, 1), got {self.momentum}")
        if self.decay_every is not None and self.decay_every < 1:
            raise DDSecError(f"--decay-every must be at least 1, got {self.decay_every}")

    EVAL_MODELS: ClassVar[int] = 20
    """Held-out models evaluated when ``eval_models`` is not given (a smaller population: all of it)."""
    RUNTIME: ClassVar[tuple[str, ...]] = ("data_dir", "download", "device", "eval_models", "heldout_population",
                                          "iterations", "keep_graphs", "theta_every", "compile")
    """Settings a resumed run may change: where the data lies, the device, the held-out evaluation,
    memory and speed options that leave the gradients as they are, and the iteration count (to
    extend a run). A front end's config adds its own (e.g. a zoo folder)."""

    def fingerprint(self) -> dict:
        """Every setting but the :attr:`RUNTIME` ones, as JSON values: what a resumed run must keep.
        A front end's own fields are in it without being named, so none can be forgotten."""
        return json.loads(json.dumps({k: v for k, v in asdict(self).items() if k not in self.RUNTIME}))


@dataclass
class DistillOutcome:
    """What a run produced: the exported set, its held-out evaluation, the loss history."""

    distilled: DistilledSet
    evaluation: EvalResult
    losses: torch.Tensor
    seconds: float


def build_model(name: str, data: ImageDataset, **kwargs) -> nn.Module:
    """The registry model for ``data``'s shape and classes, in eval mode."""
    channels, size, _ = data.image_shape
    return create_model(name, num_classes=data.num_classes, in_chans=channels, image_size=size, **kwargs).eval()


def build_inits(cfg: DistillConfig, data: ImageDataset, device: torch.device) -> tuple[nn.Module, InitDistribution, InitDistribution]:
    """The model, the training ``p(θ0)`` and the held-out ``p(θ0)`` used for evaluation."""
    if cfg.init == "random":
        model = build_model(cfg.model, data).to(device)
        return model, RandomInit(model, cfg.init_scheme), RandomInit(model, cfg.init_scheme)
    if cfg.init in FIXED_KINDS:
        model = build_model(cfg.model, data, init=cfg.init_scheme, seed=cfg.init_seed,
                            checkpoint=cfg.weights if cfg.init == "pretrained" else None).to(device)
        fixed = FixedInit(dict(model.named_parameters()), kind=cfg.init)
        return model, fixed, fixed
    if not cfg.population:
        raise DDSecError("--init population needs --population PATH (see `ddsec zoo`)")
    model = build_model(cfg.model, data).to(device)
    here = world()  # in a distributed run each process samples from its own share of the population
    train = PopulationInit(load_population(cfg.population, model=cfg.model, dataset=data.name, device=device,
                                           share=(here.rank, here.size)))
    if cfg.heldout_population is None:
        raise DDSecError("--init population needs --heldout-population PATH for an honest evaluation")
    heldout = PopulationInit(load_population(cfg.heldout_population, model=cfg.model, dataset=data.name, device=device))
    return model, train, heldout


@dataclass
class DistillJob:
    """A run ready to start: data loaded, model and ``p(θ0)`` built, all inputs validated.

    Attributes:
        fingerprint: the settings a checkpoint must match on resume; the front end's own (its
            attack or domains included), not only those of ``cfg``.
        notes: one-line notices for the user (e.g. a count capped to a population's size).
    """

    cfg: DistillConfig
    train: ImageDataset
    test: ImageDataset
    model: nn.Module
    init: InitDistribution
    heldout: InitDistribution
    device: torch.device
    fingerprint: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def fit_to_populations(job: DistillJob, eval_default: int | None = None) -> DistillJob:
    """``job`` with its model counts checked against its populations, before any work starts.

    ``--n-models`` larger than the training population is refused; ``--eval-models`` larger
    than the held-out population is capped to it, with a note. Not given, it becomes
    ``eval_default`` (else the config's ``EVAL_MODELS``), capped without a note: a default is
    no request.

    Raises:
        DDSecError: ``--n-models`` exceeds the training population.
    """
    cfg = job.cfg
    if isinstance(job.init, PopulationInit) and job.init.size < cfg.n_models:
        raise DDSecError(f"--n-models {cfg.n_models} exceeds the training population's {job.init.size} models;"
                         f" pass --n-models {job.init.size} or less")
    count, note = heldout_count(cfg.eval_models, job.heldout, flag="--eval-models",
                                default=eval_default or cfg.EVAL_MODELS)
    return replace(job, cfg=replace(cfg, eval_models=count), notes=job.notes if note is None else [*job.notes, note])


def prepare_distill(cfg: DistillConfig, *, eval_default: int | None = None) -> DistillJob:
    """Load the data and build the model and initial-weight distributions (fails fast on bad input);
    ``eval_default``: see :func:`fit_to_populations`."""
    device = resolve_device(cfg.device)
    train = load_dataset(cfg.dataset, train=True, root=cfg.data_dir, download=cfg.download)
    test = load_dataset(cfg.dataset, train=False, root=cfg.data_dir, download=cfg.download)
    model, init, heldout = build_inits(cfg, train, device)
    return fit_to_populations(DistillJob(cfg, train, test, model, init, heldout, device, cfg.fingerprint()), eval_default)


def initial_synthetic(job: DistillJob) -> SyntheticSet:
    """The starting synthetic set: ``S`` steps of class-major images, step sizes, learnable soft
    labels when ``cfg.learn_labels``, and learned inner momenta when ``cfg.momentum > 0``.

    The images start as ``cfg.image_init`` says: random real images of each class (``real``),
    standard-normal noise (``noise``), each class's ``ipc·S`` k-means centroids (``kmeans``), or
    each class's mean image in every slot (``average``).
    """
    cfg, train = job.cfg, job.train
    generator = torch.Generator().manual_seed(cfg.seed)
    synthetic = SyntheticSet.create(
        num_classes=train.num_classes, ipc=cfg.ipc, steps=cfg.steps, epochs=cfg.epochs,
        image_shape=train.image_shape, init_lr=cfg.distill_lr, generator=generator, device=job.device,
    )
    if cfg.image_init == "real":
        synthetic.images = real_images_per_class(train, cfg.ipc, cfg.steps, generator).to(job.device)
    elif cfg.image_init == "kmeans":
        synthetic.images = kmeans_images(train, cfg.ipc, cfg.steps, seed=cfg.seed).to(job.device)
    elif cfg.image_init == "average":
        synthetic.images = average_images(train, cfg.ipc, cfg.steps).to(job.device)
    if cfg.learn_labels:
        synthetic = synthetic.with_learnable_labels(train.num_classes)
    return synthetic.with_learned("momentum", cfg.momentum) if cfg.momentum > 0 else synthetic


def to_distilled(synthetic: SyntheticSet, meta: DistilledMeta) -> DistilledSet:
    """The exportable set: images, labels (soft when learned), step sizes and momenta (if learned)."""
    final = synthetic.detached()
    return DistilledSet(final.images, final.soft_labels(), final.lrs(), meta, final.momenta())


@dataclass
class DistillTask:
    """Plain distillation as a :class:`ddsec.pipeline.Task`: cross-entropy of the unrolled models on
    real training batches, judged by held-out accuracy.

    Attributes:
        job: from :func:`prepare_distill`.
        meta: overrides of the exported metadata (the adapt front end sets ``task``, ``source``,
            ``target`` and its own ``config``).
    """

    job: DistillJob
    meta: dict | None = None
    quick: torch.Tensor = field(init=False)  # int64 [≤ 2000]: the test images of the quick figure

    def __post_init__(self) -> None:
        self.quick = torch.randperm(len(self.job.test), generator=torch.Generator().manual_seed(0))[:2000]

    def start(self) -> SyntheticSet:
        return initial_synthetic(self.job)

    def setup(self, start: SyntheticSet) -> Setup:
        job = self.job
        return Setup(ClassificationObjective(job.model, job.init, RealBatches(job.train.images, job.train.labels,
                                                                              job.cfg.batch_size, job.device)))

    def quick_figure(self, synthetic: SyntheticSet) -> float:
        """Held-out accuracy on up to 5 models and 2,000 test images (the same ones every time)."""
        job = self.job
        return float(evaluate_synthetic(
            job.model, job.heldout, synthetic, job.test.images[self.quick], job.test.labels[self.quick],
            n_models=distinct_draws(job.heldout, min(5, job.cfg.eval_models)),
            generator=torch.Generator().manual_seed(job.cfg.seed + 7),
        ).after.mean())

    def finish(self, result: DistillResult, seconds: float) -> DistillOutcome:
        cfg, train, test = self.job.cfg, self.job.train, self.job.test
        evaluation = evaluate_synthetic(
            self.job.model, self.job.heldout, result.synthetic, test.images, test.labels,
            n_models=distinct_draws(self.job.heldout, cfg.eval_models),
            generator=torch.Generator().manual_seed(cfg.seed + 1_000_003),
        )
        fields = dict(task="distill", dataset=cfg.dataset, model=cfg.model, epochs=cfg.epochs, ipc=cfg.ipc,
                      init=cfg.init, mean=train.mean, std=train.std, seed=cfg.seed, num_classes=train.num_classes,
                      config=asdict(cfg))
        fields |= self.meta or {}
        fields["config"] = {**fields["config"], **({"plan": result.plan} if result.plan else {})}
        distilled = to_distilled(result.synthetic, DistilledMeta(**fields))
        return DistillOutcome(distilled, evaluation, result.losses, seconds)


def run_distill(job: DistillJob, *, meta: dict | None = None, **kwargs) -> DistillOutcome | None:
    """Distil, evaluate on held-out models and build the exportable set: :func:`ddsec.pipeline.run`
    of a :class:`DistillTask` (keywords: checkpoints, resume, quick checks, ``on_progress``).

    In a distributed run every rank distils; rank 0 alone evaluates and returns the outcome, the
    others return ``None``.
    """
    return run(DistillTask(job, meta), **kwargs)


def config_from_meta(meta: DistilledMeta, config_class: type[DistillConfig] = DistillConfig, **overrides) -> DistillConfig:
    """The config (a :class:`DistillConfig` or a front end's subclass) stored in a distilled set's
    metadata, with the ``overrides`` that are not ``None``."""
    known = set(config_class.__dataclass_fields__)
    stored = {k: v for k, v in meta.config.items() if k in known}
    try:
        return config_class(**{**stored, **{k: v for k, v in overrides.items() if v is not None}})
    except TypeError as exc:
        raise DDSecError(f"the file's stored config is not usable ({exc})") from None


def prepare_eval(
    path: str | Path,
    *,
    data_dir: str | None = None,
    heldout_population: str | None = None,
    device: str = "auto",
) -> tuple[DistilledSet, DistillJob]:
    """Load an exported distilled set and rebuild its run: data, model and held-out ``p(θ0)``.

    Random-init sets are evaluated on fresh inits, fixed and pretrained ones on their own init,
    population ones on a held-out population.
    """
    from ddsec.export import load_distilled

    dset = load_distilled(path)
    if dset.meta.task != "distill":
        raise DDSecError(f"{path} is a {dset.meta.task} set; `ddsec eval` evaluates distill sets only, and the"
                         f" `ddsec {dset.meta.task}` run that wrote it reports its own evaluation (see its --json)")
    cfg = config_from_meta(dset.meta, data_dir=data_dir, heldout_population=heldout_population, device=device)
    job = prepare_distill(cfg)
    if tuple(job.test.image_shape) != tuple(dset.images.shape[2:]):
        raise DDSecError(f"{path} holds {tuple(dset.images.shape[2:])} images but {cfg.dataset} gives"
                         f" {job.test.image_shape}")
    return dset, job


def evaluate_distilled(
    dset: DistilledSet, job: DistillJob, *, n_models: int, per_step: bool = False, seed: int = 1
) -> EvalResult:
    """Train held-out models with ``dset`` exactly as distilled and test them on ``job``'s test split."""
    synthetic = SyntheticSet.from_lrs(dset.images.to(job.device), dset.labels.to(job.device),
                                      dset.lrs.to(job.device), dset.meta.epochs,
                                      None if dset.momenta is None else dset.momenta.to(job.device))
    return evaluate_synthetic(
        job.model, job.heldout, synthetic, job.test.images, job.test.labels,
        n_models=distinct_draws(job.heldout, n_models), per_step=per_step,
        generator=torch.Generator().manual_seed(seed),
    )
