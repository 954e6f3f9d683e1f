"""K→T poisoning with distilled data: one victim step on a few images re-targets a class.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §3.4 and §4.3: learn ``S`` step batches
(one step of ``classes × ipc`` images by default) and their step sizes such that SGD on them,
starting from *any* well-trained classifier, makes it predict class ``K`` as ``T`` while leaving
the other classes alone. The outer objective is cross-entropy on real training batches with
every label ``K`` replaced by ``T``. The batch's hard labels follow a plan: ``class-major`` (each
image its own class, as in the paper) or ``flip`` (the default where it applies: the slots of
``K`` and ``T`` both labelled ``T``, see :func:`flip_slots`); or (``learn_labels``) soft labels are
learned alongside the images. By default the
attack is the strongest batch whose collateral (the drop in accuracy on the other classes,
measured on training-population models) stays within ``max_collateral``: a Lagrange multiplier
on the other classes' loss, updated by dual ascent while crafting (:mod:`~ddsec.attacks.collateral`).
With ``max_collateral=None`` the objective is the paper's fixed one, ``attack_weight`` (1 in the
paper) weighing the relabelled class-``K`` images against the others. ``θ0`` is drawn from a
population of pretrained models; the batch is judged on a
held-out population trained with disjoint seeds (and optionally on a population of another
architecture or recipe, to measure transfer).

The images are deliverable by default (:mod:`ddsec.data.pixels`): valid pixels in ``[0, 1]``,
optionally 8-bit levels that crafting sees (``quantize="8bit"``) and an L∞ ball of radius
``epsilon`` around the real training image each slot starts from, of the slot's own class (a
clean-label batch); ``pixels="free"`` gives the paper's unconstrained images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ddsec.attacks.collateral import CHECK_EVERY, Choice, CollateralBudget, TrainingCheck, hold_out
from ddsec.attacks.metrics import AttackResult, evaluate_attack, relabel, weighted_relabel
from ddsec.attacks.victims import parse_victim
from ddsec.data import ImageDataset
from ddsec.data.pixels import PixelConstraint, pixel_report
from ddsec.data.summaries import class_index
from ddsec.defences.evasion import EvasionPenalty, parse_evade, reference_set
from ddsec.distill import (
    DistillConfig,
    DistillJob,
    build_model,
    config_from_meta,
    initial_synthetic,
    prepare_distill,
    to_distilled,
)
from ddsec.engine import (
    ClassificationObjective,
    DistillResult,
    InnerOptimizer,
    InnerStep,
    InitDistribution,
    PopulationInit,
    RealBatches,
    SyntheticSet,
)
from ddsec.errors import DDSecError
from ddsec.evaluate import heldout_count
from ddsec.export import DistilledMeta, DistilledSet
from ddsec.models_zoo import load_population
from ddsec.models_zoo.zoo import check_fits, entry_name, resolve_pair, resolve_population
from ddsec.pipeline import Setup, run

POISON_INITS = ("population", "pretrained")
LABEL_PLANS = ("class-major", "flip")
PIXELS = ("valid", "free")
QUANTIZE = ("none", "8bit")


@dataclass(frozen=True)
class PoisonConfig(DistillConfig):
    """Every setting of one ``ddsec poison`` run (the ``distill`` settings plus the attack's).

    ``population`` / ``heldout_population`` name zoo entries or paths (default: the zoo entry
    ``<dataset>-<model>``, trained on first use); ``eval_population`` adds a transfer evaluation.
    """

    steps: int = 1
    epochs: int = 1
    init: str = "population"
    n_models: int = 8
    iterations: int = 200
    lr: float = 0.02
    distill_lr: float = 0.02
    attack: int = 3
    target: int = 8
    attack_weight: float = 1.0
    labels: str | None = None  # None: flip where it applies (see flip_applies), else class-major
    max_collateral: float | None = 0.03  # None: the paper's fixed objective, weighted by attack_weight
    check_every: int = CHECK_EVERY
    pixels: str = "valid"
    quantize: str = "none"
    epsilon: float | None = None
    victims: tuple[str, ...] = ()
    evade: tuple[str, ...] = ()
    evade_weight: float = 1.0
    eval_population: str | None = None
    zoo: str | None = None
    EVAL_MODELS: ClassVar[int] = 50
    RUNTIME: ClassVar[tuple[str, ...]] = (*DistillConfig.RUNTIME, "eval_population", "zoo")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.labels is None:
            object.__setattr__(self, "labels", "flip" if self.flip_applies else "class-major")
        if self.init not in POISON_INITS:
            raise DDSecError(f"--init must be population or pretrained for an attack, got {self.init!r}")
        if self.attack == self.target:
            raise DDSecError(f"--attack and --target are both {self.attack}; the attack needs two different classes")
        if not self.attack_weight > 0:
            raise DDSecError(f"--attack-weight must be positive, got {self.attack_weight}")
        if self.max_collateral is not None and not 0 < self.max_collateral < 1:
            raise DDSecError(f"--max-collateral must be a fraction in (0, 1) such as 0.03 (3 points), or none;"
                             f" got {self.max_collateral}")
        if self.check_every < 1:
            raise DDSecError(f"--check-every must be at least 1 (outer iterations), got {self.check_every}")
        if self.max_collateral is not None and self.attack_weight != 1:
            raise DDSecError("--attack-weight sets the paper's fixed objective and --max-collateral a budget the attack"
                             " meets by itself: pass only one")
        if self.attack < 0 or self.target < 0:
            raise DDSecError(f"class indices must not be negative, got --attack {self.attack} --target {self.target}")
        if self.pixels not in PIXELS or self.quantize not in QUANTIZE:
            raise DDSecError(f"--pixels must be valid or free and --quantize none or 8bit, got {self.pixels!r} and"
                             f" {self.quantize!r}")
        if self.pixels == "free" and (self.quantize != "none" or self.epsilon is not None):
            raise DDSecError("--quantize and --epsilon constrain pixels; they need --pixels valid")
        for spec in self.victims:
            parse_victim(spec)  # a bad spec fails here, in one line, before any work
        parse_evade(",".join(self.evade))
        if not self.evade_weight > 0:
            raise DDSecError(f"--evade-weight must be positive, got {self.evade_weight}")
        if self.labels not in LABEL_PLANS:
            raise DDSecError(f"--labels must be class-major or flip, got {self.labels!r}")
        if self.labels == "flip" and not self.flip_applies:
            raise DDSecError("--labels flip starts slots from real class-K images labelled T: it needs --image-init"
                             " real, no --learn-labels and no --epsilon (a clean-label batch keeps its classes)")
        if self.epsilon is not None and (self.image_init != "real" or self.learn_labels):
            raise DDSecError("--epsilon perturbs real images of each slot's own class: it needs --image-init real"
                             " and no --learn-labels")

    @property
    def flip_applies(self) -> bool:
        """Whether the ``flip`` label plan fits the other settings: hard labels, images started from
        real ones, and not a clean-label batch (whose images keep their classes)."""
        return self.image_init == "real" and not self.learn_labels and self.epsilon is None


@dataclass
class PoisonJob:
    """A validated attack, ready to run: data, model, populations and transfer population.

    ``base.fingerprint`` is the attack's own (class pair and weight included); ``notes`` are
    one-line notices for the user (counts capped to a population's size).
    """

    cfg: PoisonConfig
    base: DistillJob
    transfer: tuple[nn.Module, InitDistribution, str] | None
    notes: list[str] = field(default_factory=list)


@dataclass
class PoisonOutcome:
    """The exported batch, its evaluation on held-out (and transfer) models, the loss history.

    ``crafting`` is what the attacker measured on training-population models (see
    :class:`~ddsec.attacks.collateral.TrainingCheck`): ``train_asr``, ``train_collateral`` and its
    one-sided 95 % upper bound ``train_collateral_bound`` of the delivered batch, the ``iteration``
    that made it, ``max_collateral`` and the final multiplier ``lambda`` (both ``None`` for the
    paper's fixed objective), ``budget_met``: whether that bound is within the budget (no
    measured batch was when it is ``False``: the batch is then the last one; ``None`` without a
    budget), and ``checks``: the budget check's measurements while crafting (all of the first 256,
    thinned evenly past that; see :meth:`~ddsec.attacks.collateral.CollateralBudget.checks`; empty
    without a budget). The exported file's metadata keeps all but ``checks``.
    """

    distilled: DistilledSet
    evaluation: AttackResult
    transfer: AttackResult | None
    losses: torch.Tensor
    seconds: float
    pixels: dict[str, float]
    crafting: dict[str, float | int | list | None]


def _check_classes(cfg: PoisonConfig, data: ImageDataset) -> None:
    for flag, value in (("--attack", cfg.attack), ("--target", cfg.target)):
        if value >= data.num_classes:
            raise DDSecError(f"{flag} {value} is out of range: {data.name} has classes 0 … {data.num_classes - 1}")


def resolve_populations(
    cfg: PoisonConfig, train_entry: Callable[[str], None] | None = None
) -> tuple[str | None, str | None]:
    """``(train, heldout)`` population paths for ``cfg`` (``None`` for a pretrained init).

    Without ``--population`` the zoo entry ``<dataset>-<model>`` is used; if it is missing and
    ``train_entry`` is given, it is called with the entry name to train it first.
    """
    if cfg.init != "population":
        return None, None
    default = entry_name(cfg.dataset, cfg.model)
    train, heldout = resolve_pair(
        cfg.population, cfg.heldout_population, default=default, root=cfg.zoo,
        train_default=None if train_entry is None else (lambda: train_entry(default)),
        how_to_train=f"ddsec zoo train --dataset {cfg.dataset} --model {cfg.model}",
    )
    return str(train), str(heldout)


def prepare_poison(cfg: PoisonConfig, train_entry: Callable[[str], None] | None = None) -> PoisonJob:
    """Validate every parameter, load data and populations; fails fast with one clear line."""
    from ddsec.data import load_dataset

    _check_classes(cfg, load_dataset(cfg.dataset, train=False, root=cfg.data_dir, download=cfg.download))
    train_path, heldout_path = resolve_populations(cfg, train_entry)
    base_cfg = DistillConfig(**{k: v for k, v in asdict(cfg).items() if k in DistillConfig.__dataclass_fields__}
                             | {"population": train_path, "heldout_population": heldout_path})
    base = prepare_distill(base_cfg, eval_default=cfg.EVAL_MODELS)
    base = replace(base, fingerprint={**cfg.fingerprint(), **base.fingerprint})  # base: resolved paths
    asked = cfg.eval_models
    cfg = replace(cfg, eval_models=base.cfg.eval_models)  # capped to the held-out population
    notes = list(base.notes)
    for path in (train_path, heldout_path):
        if path is not None:
            check_fits(path, base.train, dataset=base.train.name, model=cfg.model, purpose="this attack")
    transfer = None
    if cfg.eval_population is not None:
        transfer = other_population(cfg.eval_population, base, cfg.zoo)
        note = heldout_count(asked, transfer[1], flag="--eval-models", default=cfg.EVAL_MODELS)[1]
        notes += [] if note is None else [f"transfer population {transfer[2]}: {note}"]
    return PoisonJob(cfg, base, transfer, notes)


def other_population(name: str, base: DistillJob, zoo: str | None) -> tuple[nn.Module, PopulationInit, str]:
    """``(model, held-out population, path)`` of another zoo entry or path (another architecture or
    recipe) that fits ``base``'s data, for transfer measurements.

    Raises:
        DDSecError: the population is missing or was trained for other data.
    """
    path = resolve_population(name, "heldout", zoo)
    meta = check_fits(path, base.train, dataset=base.train.name, model=None, purpose="this attack")
    model = build_model(meta["model"], base.train).to(base.device)
    return model, PopulationInit(load_population(path, device=base.device)), str(path)


class PoisonTask:
    """The attack as a :class:`ddsec.pipeline.Task`: the relabelled outer objective over the crafting
    population (a collateral budget's dual player, deliverable pixels, victims and an evasion
    penalty as hooks), judged by attack success on held-out models.

    The training check's models and images are held out of crafting (:func:`hold_out`); under a
    collateral budget the batch delivered is the strongest measured within it (see
    :meth:`~ddsec.attacks.collateral.CollateralBudget.choose`), else the last one.
    """

    def __init__(self, job: PoisonJob) -> None:
        cfg, base = job.cfg, job.base
        self.poison, self.job, self.cfg = job, base, cfg
        self.craft_init, self.craft_images, check_init, check_images = hold_out(base.init, base.train,
                                                                                seed=cfg.seed + 11)
        self.check = TrainingCheck(base.model, check_init, check_images, attack=cfg.attack, target=cfg.target,
                                   seed=cfg.seed + 11, victims=tuple(parse_victim(spec) for spec in cfg.victims),
                                   clean=self.craft_images)
        self.budget: CollateralBudget | None = None
        self.start_set: SyntheticSet | None = None
        test = base.test
        self.quick = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:2000])

    def start(self) -> SyntheticSet:
        start = initial_synthetic(self.job)
        if self.cfg.labels == "class-major":
            return start
        return flip_slots(start, self.job.train, attack=self.cfg.attack, target=self.cfg.target,
                          generator=torch.Generator().manual_seed(self.cfg.seed + 17))

    def setup(self, start: SyntheticSet) -> Setup:
        cfg, base, train = self.cfg, self.job, self.job.train
        self.start_set = start
        self.budget = None if cfg.max_collateral is None else CollateralBudget(
            self.check, cfg.max_collateral, start, num_classes=train.num_classes, attack=cfg.attack,
            target=cfg.target, every=cfg.check_every)
        objective = ClassificationObjective(
            base.model, self.craft_init,
            RealBatches(self.craft_images.images, self.craft_images.labels, cfg.batch_size, base.device),
            relabel=outer_targets(cfg, train.num_classes, self.budget),
        )
        return Setup(objective, constraint=pixel_constraint(cfg, train, start.images),
                     sample_inner=victim_sampler(cfg, train, start, base.device), dual=self.budget,
                     penalty=evasion_penalty(cfg, base.model, train, base.device))

    def quick_figure(self, synthetic: SyntheticSet) -> float:
        """Attack success on up to 5 held-out models and 2,000 test images (the same ones every time)."""
        cfg = self.cfg
        return evaluate_attack(self.job.model, self.job.heldout, synthetic, self.quick, attack=cfg.attack,
                               target=cfg.target, n_models=min(5, cfg.eval_models),
                               seed=cfg.seed + 7).summary()["asr_mean"]

    def finish(self, result: DistillResult, seconds: float) -> PoisonOutcome:
        cfg, base, train, test = self.cfg, self.job, self.job.train, self.job.test
        done, final = len(result.losses), result.synthetic
        chosen = Choice(final, self.check(final), done) if self.budget is None else self.budget.choose(final, done)
        crafting = {"max_collateral": cfg.max_collateral, "lambda": None if self.budget is None else self.budget.lam,
                    "iteration": chosen.iteration, "train_asr": chosen.measurement.asr,
                    "train_collateral": chosen.measurement.collateral,
                    "train_collateral_bound": chosen.measurement.collateral_bound,
                    "budget_met": None if self.budget is None else self.budget.within(chosen.measurement)}
        checks = [] if self.budget is None else self.budget.checks()
        kwargs = dict(attack=cfg.attack, target=cfg.target, n_models=cfg.eval_models, seed=cfg.seed + 1_000_003)
        evaluation = evaluate_attack(base.model, base.heldout, chosen.synthetic, test, **kwargs)
        transfer = None if self.poison.transfer is None else evaluate_attack(
            self.poison.transfer[0], self.poison.transfer[1], chosen.synthetic, test, **kwargs)
        meta = DistilledMeta(
            task="poison", dataset=cfg.dataset, model=cfg.model, epochs=cfg.epochs, ipc=cfg.ipc, init=cfg.init,
            mean=train.mean, std=train.std, seed=cfg.seed, num_classes=train.num_classes,
            config=asdict(cfg) | ({"plan": result.plan} if result.plan else {}) | {"crafting": crafting},
            attack_class=cfg.attack, target_class=cfg.target,
        )
        distilled = to_distilled(chosen.synthetic, meta)
        anchors = None if cfg.epsilon is None else self.start_set.images.cpu()
        pixels = pixel_report(distilled.images, train.mean, train.std, anchors)
        return PoisonOutcome(distilled, evaluation, transfer, result.losses, seconds, pixels,
                             crafting | {"checks": checks})


def run_poison(job: PoisonJob, **kwargs) -> PoisonOutcome | None:
    """Learn the poisoning batch, evaluate it on held-out models and build the exportable set:
    :func:`ddsec.pipeline.run` of a :class:`PoisonTask` (keywords: checkpoints, resume, quick
    checks of the attack success on up to 5 held-out models, ``on_progress``).

    In a distributed run every rank learns the batch; rank 0 alone evaluates and returns the
    outcome, the others return ``None``.
    """
    return run(PoisonTask(job), **kwargs)


def outer_targets(
    cfg: PoisonConfig, num_classes: int, budget: CollateralBudget | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The outer loss's targets for true labels int64 ``[B]``: the budget's Lagrangian weights, else
    the paper's ``K → T`` relabelling (int64 ``[B]``), weighted by ``cfg.attack_weight`` when it is
    not 1 (float ``[B, K]``)."""
    if budget is not None:
        return budget.targets
    if cfg.attack_weight == 1:
        return lambda y: relabel(y, cfg.attack, cfg.target)
    return lambda y: weighted_relabel(y, cfg.attack, cfg.target, num_classes, cfg.attack_weight)


def victim_sampler(
    cfg: PoisonConfig, train: ImageDataset, synthetic: SyntheticSet, device: torch.device
) -> Callable[[torch.Generator], tuple[InnerOptimizer, list[InnerStep]]] | None:
    """Victim-aware crafting (MetaPoison's expectation over victims): each outer iteration draws one
    of ``cfg.victims`` uniformly and unrolls its optimizer and step plan, clean draws included.
    ``None`` when no victims are given (the paper's single plain step)."""
    if not cfg.victims:
        return None
    victims = [parse_victim(spec) for spec in cfg.victims]
    shape = (synthetic.steps, synthetic.images.shape[1], synthetic.total_steps)

    def sample(generator: torch.Generator) -> tuple[InnerOptimizer, list[InnerStep]]:
        victim = victims[int(torch.randint(len(victims), (1,), generator=generator))]
        return victim.inner_optimizer(), victim.plan(shape, train, generator, device)

    return sample


def evasion_penalty(cfg: PoisonConfig, model: nn.Module, train: ImageDataset,
                    device: torch.device) -> EvasionPenalty | None:
    """The adaptive attacker's penalty for ``cfg.evade`` (``None`` without it), against 256 clean
    training images drawn once with every class present."""
    if not cfg.evade:
        return None
    images, labels = reference_set(train.images, train.labels, 256, torch.Generator().manual_seed(cfg.seed + 13))
    return EvasionPenalty(model, cfg.evade, (images.to(device), labels.to(device)), weight=cfg.evade_weight)


def flip_slots(synthetic: SyntheticSet, train: ImageDataset, *, attack: int, target: int,
               generator: torch.Generator) -> SyntheticSet:
    """The ``flip`` label plan: the slots of classes ``K`` and ``T`` both labelled ``T``, and started
    from distinct random real class-``K`` images; every other class keeps its slots.

    In the paper's class-major batch these two slots are the attack's least useful: a ``K`` image
    labelled ``K`` reinforces the class the attack removes, a ``T`` image labelled ``T`` what the
    victim already knows. Learned soft labels (``--learn-labels``, on MNIST 0 → 1 and 6 → 7) give
    them up by themselves: the ``K`` slot's label goes to ``T``, the ``T`` slot's spreads over other
    classes, and one or two slots of ``K``-like classes lean to ``T``. Here the two slots carry the
    hard label ``T``, which a victim's ordinary training takes, and the attack gains as much
    (RESULTS, class-pair sweep).

    Args:
        synthetic: a class-major set with hard labels (images ``[S, N, C, H, W]``, labels ``[S, N]``).
        train: the training split the class-``K`` images come from.

    Returns:
        ``synthetic`` with those slots' images and labels replaced (the learned tensors shared).
    """
    slots = (synthetic.labels == attack) | (synthetic.labels == target)
    count = int(slots.sum())
    pool = class_index(train, attack, count)
    picks = pool[torch.randperm(pool.numel(), generator=generator)[:count]]
    images, labels = synthetic.images.detach().clone(), synthetic.labels.clone()
    images[slots] = train.images[picks].to(images)
    labels[slots] = target
    return replace(synthetic, images=images, labels=labels)


def pixel_constraint(cfg: PoisonConfig, train: ImageDataset, start: torch.Tensor) -> PixelConstraint | None:
    """The deliverability constraint of ``cfg`` (``None`` for ``pixels="free"``); ``start`` ``[S, N, C, H, W]``
    are the anchors of an ``epsilon`` ball."""
    if cfg.pixels == "free":
        return None
    return PixelConstraint(train.mean, train.std, quantize=cfg.quantize == "8bit", epsilon=cfg.epsilon,
                           anchors=None if cfg.epsilon is None else start.detach().clone())


def prepare_from_file(
    path: str | Path, *, data_dir: str | None = None, zoo: str | None = None, device: str = "auto",
    heldout_population: str | None = None,
) -> tuple[DistilledSet, PoisonJob]:
    """Load an exported poisoning batch and rebuild its attack: data, model and held-out population.

    The runtime settings (data root, zoo folder, device) given replace the stored ones, as for
    ``ddsec eval``; ``heldout_population`` replaces the stored held-out population (e.g. a larger one).

    Raises:
        DDSecError: not a poison set (a ``distill`` or ``adapt`` set), or its data or populations
            cannot be found.
    """
    from ddsec.export import load_distilled

    dset = load_distilled(path)
    if dset.meta.task != "poison":
        raise DDSecError(f"{path} is a {dset.meta.task} set, not a poisoning batch (written by `ddsec poison`)")
    meta = dset.meta
    if "max_collateral" not in meta.config:  # written before collateral budgets: the paper's fixed objective
        meta = replace(meta, config={**meta.config, "max_collateral": None})
    if "labels" not in meta.config:  # written before label plans: the paper's class-major labels
        meta = replace(meta, config={**meta.config, "labels": "class-major"})
    cfg = config_from_meta(meta, PoisonConfig, data_dir=data_dir, zoo=zoo, device=device, download=False,
                           heldout_population=heldout_population)
    return dset, prepare_poison(replace(cfg, eval_population=None))
