"""Collateral as a constraint: the strongest K→T batch whose damage to the other classes stays in budget.

The paper's objective (Wang et al., arXiv 1811.10959, §3.4) weighs every real image the same, and
a fixed ``--attack-weight`` trades attack success for accuracy on the other classes at a rate that
differs from one class pair to the next. Here the trade is a constraint instead: maximise the
attack subject to *collateral* ≤ ``C``, collateral being the drop in accuracy on the classes other
than ``K`` after the victim's step.

It is played as a two-player game, the proxy-Lagrangian of Cotter, Jiang and Sridharan ("Two-player
games for efficient non-convex constrained optimization", ALT 2019):

- the primal player, the outer loop's Adam on the images and step sizes, descends on the
  differentiable Lagrangian ``(L_K + λ·L_other) / (1 + λ)``: ``L_K`` is the cross-entropy of the real
  batch's class-``K`` images against ``T``, ``L_other`` that of its other images against their own
  labels, both summed over the batch and divided by its size. So ``λ = 1`` is the paper's objective
  and ``λ = 1/W`` the fixed ``--attack-weight W`` one, up to scale; dividing by ``1 + λ`` keeps the
  loss's scale bounded while ``λ`` moves (Adam's moment estimates adapt slowly to a new scale);
- the dual player measures the constraint as it is stated (accuracy, not its cross-entropy proxy)
  every ``CHECK_EVERY`` iterations (``--check-every``) with a :class:`TrainingCheck`: a quarter of
  the training population (16 to ``CHECK_MODELS`` models) on a fixed subset of training images,
  both held out of crafting (:func:`hold_out`: measured on the models and images the batch is
  crafted on, the collateral looked a point or more smaller than on unseen models; the held-out
  population is for evaluation only). The collateral it holds to the budget is the one-sided 95 %
  upper bound of the mean over models (``mean + 1.645·std/√n``), not the mean: with 4 models and
  the mean, the iterate picked as strongest within budget went over it by 1–3 points on unseen
  models; with 16 of MNIST's 200 models it still did by up to 0.8 points, the 16 reading up to
  40 % lower than other models for batches nothing had selected on them (RESULTS, class-pair
  sweep). It then takes a multiplicative (exponentiated-gradient) ascent step on ``λ``::

      log λ ← clip(log λ + η · clip((c − C) / C, −1, 1), log λ_min, log λ_max)

  Multiplicative, so ``λ`` stays positive and moves as readily from 0.01 to 0.02 as from 10 to 20;
  the violation is relative to the budget, so ``η`` needs no rescaling with ``C``; it is clipped,
  so one measurement moves ``λ`` by a factor ``e^η`` at most. ``λ`` starts at 1, the paper's
  objective: while the batch stays within budget the attack weighs more and more.

Primal-dual iterates circle the constraint, so the last one may lie slightly over it. The player
keeps the strongest iterate it measured within budget (highest attack success on the check), and
:meth:`CollateralBudget.choose` returns it unless the final set is at least as strong and within
budget too; when no measured iterate was within budget, the final set is returned, and its
measured collateral says so. The measurements are logged (:meth:`CollateralBudget.checks`, thinned
evenly past ``CHECK_ROWS``): the run's trajectory shows whether a pair never met its budget or met
it early and then lost ground.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsec.attacks.metrics import AttackMetrics, attack_metrics, relabel
from ddsec.attacks.stress import train_victims
from ddsec.attacks.victims import PAPER_VICTIM, Victim
from ddsec.data import ImageDataset
from ddsec.engine import InitDistribution, PopulationInit, SyntheticSet, distinct_draws
from ddsec.engine.learned import LEARNABLES
from ddsec.engine.population import select
from ddsec.errors import DDSecError
from ddsec.evaluate import population_predictions

CHECK_EVERY = 20
"""Default outer iterations between two measurements of the dual player (``--check-every``; the
digits recipe measures every 10 of its 200 iterations, the MNIST recipe every 40: its 48 LeNets on
1,000 images take about 1.7 s on 2 CPU cores, 40 outer iterations about 8.5 s)."""
CHECK_MODELS = 48
"""Most training-population models in a measurement (the same ones every time)."""
MIN_CHECK_MODELS = 16
"""Fewest models :func:`hold_out` holds out for the check (a quarter of a population, within these)."""
CHECK_IMAGES = 1000
"""Training images in a measurement (a fixed random subset)."""
Z_UPPER = 1.645
"""One-sided 95 % normal quantile: the collateral bound is ``mean + Z_UPPER·std/√n`` over models."""
DUAL_STEP = 0.3
"""``η``: one measurement moves ``λ`` by a factor ``e^0.3 ≈ 1.35`` at most."""
LAMBDA_RANGE = (1e-3, 1e3)
"""Bounds of ``λ``: from 1000 times the paper's weight on the attacked class to 1/1000 of it."""
CHECK_ROWS = 256
"""Rows of the measurement log (an even number): each time it fills, every other row is dropped and
the stride between logged measurements doubles (a fixed-size state that spans the whole run)."""
CHECK_COLUMNS = ("iteration", "asr", "collateral", "collateral_bound", "lambda")
CHECK_KEYS = ("checks", "checks_stride", "checks_count")
"""The log's state: its rows, the stride between logged measurements, the measurements taken."""


@dataclass(frozen=True)
class Measurement:
    """A set's attack success (class-``K`` images predicted ``T``) and collateral (drop in accuracy
    on the other classes), fractions averaged over a check's models, and ``collateral_bound``, the
    one-sided 95 % upper confidence bound of that mean (the mean itself with one model)."""

    asr: float
    collateral: float
    collateral_bound: float

    @classmethod
    def of_models(cls, asr: Tensor, collateral: Tensor) -> Measurement:
        """From per-model attack success and collateral, float ``[M]``."""
        spread = float(collateral.std()) / math.sqrt(len(collateral)) if len(collateral) > 1 else 0.0
        mean = float(collateral.mean())
        return cls(float(asr.mean()), mean, mean + Z_UPPER * spread)


class TrainingCheck:
    """Attack success and collateral on training-population models and a fixed subset of training
    images: what an attacker can measure while crafting.

    Measured after the paper's victim (one step on the batch alone) by default; with ``victims``
    (victim-aware crafting), after each of them, per model averaged over the victims: the batch
    must keep its collateral under the victims it is crafted for, not under the paper's victim
    (a batch strong enough to survive dilution into a clean mini-batch costs the other classes
    more when applied alone). The models and their accuracy before any batch are drawn and
    measured once, at the first call, and reused.

    Args:
        model: the architecture, in eval mode.
        init: the *training* ``p(θ0)`` (never the held-out population).
        train: the training split; ``images`` of it, drawn once with ``seed``, are used.
        attack, target: ``K`` and ``T``.
        seed: seeds the subset and the models' draw (the same models every call).
        models: models per measurement (at most the population's size).
        images: training images per measurement (at most the split's size).
        victims: the victims crafting is aware of (empty: the paper's victim).
        clean: the clean images ``victims`` mix in or train on (the attacker's training images).
    """

    def __init__(self, model: nn.Module, init: InitDistribution, train: ImageDataset, *, attack: int, target: int,
                 seed: int, models: int = CHECK_MODELS, images: int = CHECK_IMAGES, victims: tuple[Victim, ...] = (),
                 clean: ImageDataset | None = None) -> None:
        if victims and clean is None:
            raise ValueError("a check under victims needs the clean images they train on")
        self.model, self.init, self.attack, self.target = model, init, attack, target
        self.seed, self.models, self.clean = seed, models, clean
        self.victims = victims or (PAPER_VICTIM,)
        self.data = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:images])

    @cached_property
    def reference(self) -> tuple[dict[str, Tensor], AttackMetrics]:
        """The check's models (``[M, …]`` parameters) and their metrics before any batch."""
        draws = distinct_draws(self.init, min(self.models, getattr(self.init, "size", self.models)))
        params = self.init.sample(draws, torch.Generator().manual_seed(self.seed))
        return params, self._metrics(params)

    def __call__(self, synthetic: SyntheticSet) -> Measurement:
        params, before = self.reference
        asr, collateral = [], []
        for index, victim in enumerate(self.victims):
            trained = train_victims(self.model, params, synthetic, victim, self.clean,
                                    torch.Generator().manual_seed(self.seed + 1 + index))
            after = self._metrics(trained)
            asr.append(after.asr)
            collateral.append(before.acc_other - after.acc_other)
        return Measurement.of_models(torch.stack(asr).mean(0), torch.stack(collateral).mean(0))

    def _metrics(self, params: dict[str, Tensor]) -> AttackMetrics:
        """Per-model attack metrics of the population ``params`` on the check's images."""
        data = self.data
        return attack_metrics(population_predictions(self.model, params, data.images), data.labels, self.attack,
                              self.target, data.num_classes)


def hold_out(init: InitDistribution, train: ImageDataset, *, seed: int, models: int = CHECK_MODELS,
             images: int = CHECK_IMAGES) -> tuple[InitDistribution, ImageDataset, InitDistribution, ImageDataset]:
    """``(crafting p(θ0), crafting images, check p(θ0), check images)``: the check's models and images
    held out of crafting, so that it measures what models and images the batch never saw will do.

    A quarter of a population is held out for the check, at least ``MIN_CHECK_MODELS`` and at most
    ``models``, where that leaves crafting at least as many (a smaller population, or a fixed init,
    is shared); and ``images`` training images, at most a quarter of them; both drawn with ``seed``.
    """
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    held = min(images, len(train) // 4)
    craft_images, check_images = train.subset(order[held:]), train.subset(order[:held])
    if not isinstance(init, PopulationInit):
        return init, craft_images, init, check_images
    held_models = min(models, max(MIN_CHECK_MODELS, init.size // 4))
    if init.size <= 2 * held_models:
        return init, craft_images, init, check_images
    picks = torch.randperm(init.size, generator=torch.Generator().manual_seed(seed)).to(
        next(iter(init.population.values())).device)
    return (PopulationInit(select(init.population, picks[held_models:])), craft_images,
            PopulationInit(select(init.population, picks[:held_models])), check_images)


@dataclass(frozen=True)
class Choice:
    """The set a constrained run delivers, its measurement and how many outer iterations made it."""

    synthetic: SyntheticSet
    measurement: Measurement
    iteration: int


class CollateralBudget:
    """The dual player of the constrained attack (a :class:`ddsec.engine.Dual`): the multiplier ``λ``
    and the strongest iterate measured within budget; its :meth:`targets` are the outer loss's.

    Args:
        check: measures a set's attack success and collateral.
        budget: ``C``, the largest collateral allowed (a fraction in (0, 1)).
        start: the starting set (the shapes and device of the kept iterate).
        num_classes: ``K``, the number of classes.
        attack, target: the attacked class and the one it should be predicted as.
        every: outer iterations between two measurements.
    """

    def __init__(self, check: TrainingCheck, budget: float, start: SyntheticSet, *, num_classes: int, attack: int,
                 target: int, every: int = CHECK_EVERY) -> None:
        if not 0 < budget < 1:
            raise ValueError(f"a collateral budget is a fraction in (0, 1), got {budget}")
        self.check, self.budget, self.num_classes, self.attack, self.target = check, budget, num_classes, attack, target
        self.period = every
        device = start.images.device

        def scalar(value: float, dtype: torch.dtype = torch.float64) -> Tensor:
            return torch.tensor(value, dtype=dtype, device=device)

        self.state = {"log_lambda": scalar(0.0), "updated_at": scalar(0, torch.int64), "best_asr": scalar(-1.0),
                      "best_collateral": scalar(math.nan),
                      "best_collateral_bound": scalar(math.nan), "best_iteration": scalar(0, torch.int64),
                      "checks": torch.full((CHECK_ROWS, len(CHECK_COLUMNS)), math.nan, dtype=torch.float64,
                                           device=device),
                      "checks_stride": scalar(1, torch.int64), "checks_count": scalar(0, torch.int64)}
        self.state |= {f"best.{name}": tensor.detach().clone() for name, tensor in _learned(start).items()}

    def within(self, measured: Measurement) -> bool:
        """Whether ``measured`` holds the budget: its collateral's 95 % upper bound at most ``budget``."""
        return measured.collateral_bound <= self.budget

    @property
    def lam(self) -> float:
        """The current multiplier ``λ`` on the other classes' loss."""
        return math.exp(float(self.state["log_lambda"]))

    def targets(self, labels: Tensor) -> Tensor:
        """The outer loss's targets for true labels int64 ``[B]``: float ``[B, K]``, one-hot of the
        ``K → T`` relabelled classes, the rows of class-``K`` images weighing ``1/(1+λ)``, the others
        ``λ/(1+λ)`` (cross-entropy against them is the Lagrangian above)."""
        lam = self.lam
        weight = torch.where(labels == self.attack, 1.0, lam).unsqueeze(-1) / (1 + lam)
        return F.one_hot(relabel(labels, self.attack, self.target), self.num_classes).float() * weight

    def update(self, iteration: int, synthetic: SyntheticSet) -> None:
        """Every ``period`` iterations (once each), measure ``synthetic``, move ``λ`` by the
        dual step and keep the set if it is the strongest within budget so far (both on the
        collateral's upper bound)."""
        if iteration == 0 or iteration % self.period or iteration == int(self.state["updated_at"]):
            return
        measured = self.check(synthetic)
        violation = min(1.0, max(-1.0, (measured.collateral_bound - self.budget) / self.budget))
        low, high = (math.log(bound) for bound in LAMBDA_RANGE)
        log_lambda = min(high, max(low, float(self.state["log_lambda"]) + DUAL_STEP * violation))
        if self.within(measured) and measured.asr > float(self.state["best_asr"]):
            for name, tensor in _learned(synthetic).items():
                self.state[f"best.{name}"].copy_(tensor.detach())
            self.state["best_asr"].fill_(measured.asr)
            self.state["best_collateral"].fill_(measured.collateral)
            self.state["best_collateral_bound"].fill_(measured.collateral_bound)
            self.state["best_iteration"].fill_(iteration)
        self.state["log_lambda"].fill_(log_lambda)
        self.state["updated_at"].fill_(iteration)
        self._log(iteration, measured)

    def _log(self, iteration: int, measured: Measurement) -> None:
        """Log one measurement with ``λ`` after its step: measurement ``n`` (from 0) takes row
        ``n / stride`` when ``stride`` divides ``n``; a full log keeps its even rows and doubles ``stride``."""
        rows, count, stride = self.state["checks"], int(self.state["checks_count"]), int(self.state["checks_stride"])
        if count == CHECK_ROWS * stride:
            rows[: CHECK_ROWS // 2] = rows[::2].clone()
            rows[CHECK_ROWS // 2:] = math.nan
            stride *= 2
            self.state["checks_stride"].fill_(stride)
        if count % stride == 0:
            rows[count // stride] = torch.tensor([iteration, measured.asr, measured.collateral,
                                                  measured.collateral_bound, self.lam], dtype=rows.dtype,
                                                 device=rows.device)
        self.state["checks_count"].fill_(count + 1)

    def checks(self) -> list[dict[str, int | float]]:
        """The logged measurements in order, each ``{iteration, asr, collateral, collateral_bound,
        lambda}`` (``lambda`` after the step it caused; fractions as measured): all of the first
        ``CHECK_ROWS``, then every ``stride``-th from the first (so past ``CHECK_ROWS`` the last
        measurement may be missing)."""
        filled = -(-int(self.state["checks_count"]) // int(self.state["checks_stride"]))
        rows = self.state["checks"][:filled].cpu()
        return [dict(zip(CHECK_COLUMNS, (int(row[0]), *map(float, row[1:])))) for row in rows]

    def state_dict(self) -> dict[str, Tensor]:
        """``λ`` (as ``log_lambda``), where it last updated, the kept iterate with its measurement, and
        the measurement log."""
        return self.state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Take the tensors of :meth:`state_dict` (from a checkpoint or rank 0)."""
        no_log = set(CHECK_KEYS) if not set(CHECK_KEYS) & set(state) else set()  # older ddsec: allowed
        missing = sorted(set(self.state) - set(state) - no_log)
        if missing:
            raise DDSecError(f"the checkpoint's collateral budget lacks {', '.join(missing)} (written by an older"
                             " ddsec); run again without --resume, or with another --out")
        for name, tensor in self.state.items():
            if name in state:  # a checkpoint without the log (older ddsec): the log starts at the resume
                tensor.copy_(state[name])

    def choose(self, final: SyntheticSet, iterations: int) -> Choice:
        """The set to deliver after ``iterations`` outer iterations ending in ``final``: the strongest
        measured within budget, ``final`` included (``final`` when none was)."""
        measured = self.check(final)
        best_asr = float(self.state["best_asr"])
        if best_asr < 0 or (self.within(measured) and measured.asr >= best_asr):
            return Choice(final, measured, iterations)
        learned = {spec.name: self.state[f"best.{spec.key}"].clone() for spec in LEARNABLES.values()
                   if f"best.{spec.key}" in self.state}
        synthetic = SyntheticSet(self.state["best.images"].clone(), final.labels, learned, final.epochs)
        return Choice(synthetic, Measurement(best_asr, float(self.state["best_collateral"]),
                                             float(self.state["best_collateral_bound"])),
                      int(self.state["best_iteration"]))


def _learned(synthetic: SyntheticSet) -> dict[str, Tensor]:
    """The tensors of ``synthetic`` the outer loop learns, by their checkpoint names."""
    return {"images": synthetic.images, **{LEARNABLES[name].key: raw for name, raw in synthetic.learned.items()}}
