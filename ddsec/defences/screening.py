"""Screen a victim's training data for a poisoning batch, then measure what filtering buys.

The batch is injected into the victim's data (its class-labelled training set, or a clean
fine-tuning set drawn from it); for each held-out model the detectors score every sample with
that model, and their metrics are taken against the known ground truth. Then the victim trains
as it would (a :class:`~ddsec.attacks.victims.Victim`, the paper's one step by default) on what
a filter keeps — everything (no filter), what the detector does not flag at the 5 %-FPR operating
point, or exactly the clean data (a perfect filter); the clean samples a filter flags are gone from the victim's clean
draws too — and the attack metrics are measured on the
test split. A batch image the filter removes leaves its step; a step left without images or
clean data is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from ddsec.attacks.metrics import AttackMetrics, attack_metrics
from ddsec.attacks.victims import Victim
from ddsec.data import ImageDataset
from ddsec.defences.metrics import auroc, confusion, operating_point
from ddsec.defences.probe import ModelProbe
from ddsec.engine import SyntheticSet, population_forward, unroll
from ddsec.engine.population import Params, select
from ddsec.errors import DDSecError
from ddsec.features import PENULTIMATE
from ddsec.evaluate import population_predictions

FILTER_FPR = 0.05


@dataclass(frozen=True)
class InjectedData:
    """The victim's data with the batch appended: images ``[N, C, H, W]``, labels int64 ``[N]``,
    ``is_poison`` bool ``[N]`` (the last ``S·n`` samples), and ``clean`` (the clean part)."""

    images: Tensor
    labels: Tensor
    is_poison: Tensor
    clean: ImageDataset


def inject(poison: SyntheticSet, train: ImageDataset, clean_size: int | None, generator: torch.Generator) -> InjectedData:
    """The batch's images (with their hard labels, or the argmax of soft ones) appended to
    ``train`` or to ``clean_size`` images drawn from it."""
    clean = train
    if clean_size is not None:
        if not 0 < clean_size <= len(train):
            raise DDSecError(f"--clean-size must lie in 1 … {len(train)} (the training set), got {clean_size}")
        clean = train.subset(torch.randperm(len(train), generator=generator)[:clean_size])
    labels = poison.labels if poison.labels.ndim == 2 else poison.labels.argmax(-1)
    images = torch.cat([clean.images, poison.images.flatten(0, 1).cpu()])
    flat_labels = torch.cat([clean.labels, labels.flatten().cpu()])
    is_poison = torch.arange(len(images)) >= len(clean)
    return InjectedData(images, flat_labels, is_poison, clean)


def kept_batch(poison: SyntheticSet, keep: Tensor) -> SyntheticSet | None:
    """The batch without the images a filter removed (bool ``keep`` ``[S·n]``); ``None`` when none is left.

    Raises:
        DDSecError: a batch of several steps lost some but not all of a step's images unevenly.
    """
    keep = keep.view(poison.steps, -1).to(poison.images.device)
    if not keep.any():
        return None
    if keep.all():
        return poison
    if poison.steps > 1 and not bool((keep.sum(1) == keep.sum(1)[0]).all()):
        raise DDSecError("filtering a batch of several steps needs the same number of images kept in each step;"
                         " screen one-step batches (ddsec poison --steps 1)")
    return poison.with_images(keep.nonzero()[:, 1].view(poison.steps, -1))


def train_victim(model: nn.Module, params: Params, poison: SyntheticSet, keep: Tensor, victim: Victim,
                 clean: ImageDataset, seed: int) -> Params:
    """``params`` (``[M, …]``) after ``victim`` trains on the kept part of ``poison`` and on ``clean``.

    With no batch image kept, the victim's poisoned steps keep only their clean images (or are
    skipped when they have none); its clean steps are unchanged.
    """
    batch = kept_batch(poison, keep)
    generator = torch.Generator().manual_seed(seed)
    shown = poison if batch is None else batch
    plan = victim.plan((shown.steps, 0 if batch is None else shown.images.shape[1], shown.total_steps), clean,
                       generator, poison.images.device)
    if batch is None:
        plan = [step if step.slot is None else replace(step, slot=None) for step in plan
                if step.slot is None or step.clean_images is not None]
        if not plan:
            return params
    return unroll(population_forward(model, "auto"), params, shown.detached(), optimizer=victim.inner_optimizer(),
                  plan=plan)


@dataclass
class DetectorReport:
    """One detector over ``M`` models: per-model metrics, and the victims trained after its filter."""

    name: str
    auroc: list[float] = field(default_factory=list)
    tpr: dict[float, list[float]] = field(default_factory=dict)
    confusion: list[dict[str, int]] = field(default_factory=list)
    scores: list[Tensor] = field(default_factory=list)
    predictions: list[Tensor] = field(default_factory=list)

    def summary(self) -> dict:
        """Means and standard deviations over models, and the own rule's counts summed over them."""
        def spread(values: list[float]) -> dict[str, float]:
            tensor = torch.tensor(values, dtype=torch.float64)
            return {"mean": float(tensor.mean()), "std": float(tensor.std()) if len(values) > 1 else 0.0}

        counts = {key: sum(c[key] for c in self.confusion) for key in ("tp", "fp", "fn", "tn")}
        return {"auroc": spread(self.auroc), "tpr_at_fpr": {str(f): spread(v) for f, v in self.tpr.items()},
                "own_rule": counts}


@dataclass(frozen=True)
class Screening:
    """Everything ``ddsec detect`` reports: per detector, and the no-filter / perfect-filter rows."""

    detectors: list[DetectorReport]
    before: AttackMetrics
    no_filter: AttackMetrics
    perfect_filter: AttackMetrics
    after_filter: dict[str, AttackMetrics]
    is_poison: Tensor
    clean_samples: int

    def summary(self) -> dict:
        """Flat JSON-able figures: per detector its metrics and the attack after its filter, and the
        no-filter and perfect-filter rows (fractions in [0, 1])."""
        def attack(metrics: AttackMetrics) -> dict[str, float]:
            means = metrics.mean()
            return {"asr_mean": means["asr"], "asr_std": metrics.std("asr"), "acc_clean": means["acc_clean"],
                    "acc_other": means["acc_other"]}

        return {"models": int(self.before.asr.shape[0]), "poison_samples": int(self.is_poison.sum()),
                "clean_samples": self.clean_samples, "filter_fpr": FILTER_FPR, "before": attack(self.before),
                "no_filter": attack(self.no_filter), "perfect_filter": attack(self.perfect_filter),
                "detectors": {r.name: {**r.summary(), "after_filter": attack(self.after_filter[r.name])}
                              for r in self.detectors}}


def screen(
    model: nn.Module, params: Params, poison: SyntheticSet, data: InjectedData, test: ImageDataset, detectors: list,
    *, attack: int, target: int, victim: Victim, fprs: tuple[float, ...] = (0.01, 0.05), layer: str = PENULTIMATE,
    seed: int = 0, on_model: Callable[[int, int], None] | None = None,
) -> Screening:
    """Score ``data`` with every detector on each of the ``M`` models in ``params`` and train the
    victim after each detector's filter (its 5 %-FPR operating point).

    Args:
        params: held-out models ``[M, …]`` (the victims before they meet the data).
        detectors: strategy objects (see :mod:`ddsec.defences.detectors`).
        on_model: called as ``on_model(done, M)`` after each model.
    """
    models = next(iter(params.values())).shape[0]
    device = poison.images.device
    reports = [DetectorReport(d.name, tpr={f: [] for f in fprs}) for d in detectors]
    verdicts = {}  # detectors that need no model score once
    predictions: dict[str, list[Tensor]] = {"before": [], "no filter": [], "perfect filter": []}
    none_kept = torch.zeros(poison.images.shape[:2].numel(), dtype=torch.bool)  # a perfect filter's keep mask

    def predict(trained: Params) -> Tensor:
        return population_predictions(model, trained, test.images)[0]

    for m in range(models):
        one = select(params, torch.tensor([m], device=device))
        probe = ModelProbe(model, select(params, m), data.images.to(device), data.labels.to(device), layer=layer)
        predictions["before"].append(predict(one))
        predictions["no filter"].append(predict(train_victim(model, one, poison, ~none_kept, victim, data.clean, seed)))
        predictions["perfect filter"].append(predict(train_victim(model, one, poison, none_kept, victim, data.clean,
                                                                  seed)))
        for detector, report in zip(detectors, reports):
            if detector.needs_model or detector.name not in verdicts:
                verdicts[detector.name] = detector.detect(probe)
            scores, flags = verdicts[detector.name]
            report.scores.append(scores)
            report.auroc.append(auroc(scores, data.is_poison))
            for fpr in fprs:
                report.tpr[fpr].append(operating_point(scores, data.is_poison, fpr).tpr)
            report.confusion.append(confusion(flags, data.is_poison))
            threshold = operating_point(scores, data.is_poison, FILTER_FPR).threshold
            keep = scores < threshold
            kept_clean = data.clean.subset(keep[~data.is_poison].nonzero().flatten())
            report.predictions.append(predict(train_victim(model, one, poison, keep[data.is_poison], victim, kept_clean,
                                                           seed)))
        if on_model is not None:
            on_model(m + 1, models)

    def metrics(rows: list[Tensor]) -> AttackMetrics:
        return attack_metrics(torch.stack(rows), test.labels, attack, target, test.num_classes)

    return Screening(reports, metrics(predictions["before"]), metrics(predictions["no filter"]),
                     metrics(predictions["perfect filter"]), {r.name: metrics(r.predictions) for r in reports},
                     data.is_poison, int((~data.is_poison).sum()))
