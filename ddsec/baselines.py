"""The baselines of Table 1: the same number of real or summarised images, trained the same way.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §4.1 and Table 1 compare a distilled set
of ``S`` steps × ``N = classes·ipc`` images with training sets of the same size:

- ``random``: random real training images of each class, laid out like a synthetic set.
- ``optimized``: the best 20% of ``candidates`` random real sets, scored on a selection subset.
- ``kmeans``: per class, the ``ipc·S`` k-means centroids of that class's training images.
- ``average``: per class, the average training image, in every image slot of every step.
- ``knn``: no training; 1-nearest-neighbour classification of the test split among
  ``classes·ipc·S`` random real images (mean ± std over draws); the same with the k-means
  centroids is reported in :attr:`BaselineResult.details` (``kmeans_knn_acc``).

The first four are strategies (:data:`TRAINED_BASELINES`: the image sets a baseline trains and how
it picks its final ones) that share one step-size search and one trainer; adding a baseline is
one class. They are trained on held-out models from ``p(θ0)`` exactly like a distilled set
(:func:`ddsec.evaluate.evaluate_synthetic`): ``S`` step batches with class-major labels, replayed
for ``E`` epochs, one step size per inner step. The paper reports each with the best step size
and epochs among {learned, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3} × {1, 3, 5}. Here the grid is
searched cheaply, with ``grid_models`` models on a fixed random subset of at most
``grid_images`` test images, and the winner is evaluated on the whole test split with
``n_models`` fresh models. The ``learned`` cell is the distilled set's own schedule ``[S·E]``,
tried only with its own ``E`` epochs.

Selecting step sizes, epochs and the "optimized" sets on the test split favours the baselines
(as the paper's protocol did); the distilled set gets no such selection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ddsec.data import ImageDataset
from ddsec.data.summaries import average_images, kmeans_images, real_images_per_class
from ddsec.engine import FIXED_KINDS, InitDistribution, SyntheticSet, class_major_labels
from ddsec.errors import DDSecError
from ddsec.evaluate import EvalResult, evaluate_synthetic, heldout_count

BASELINES = ("random", "optimized", "kmeans", "average", "knn")
"""Every baseline kind, in the order of the paper's Table 1."""
GRID_LRS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
"""Fixed step sizes tried for the step-trained baselines (besides the learned schedule)."""
GRID_EPOCHS = (1, 3, 5)
"""Epochs tried with each fixed step size."""
KEEP_FRACTION = 0.2
"""Share of the random candidate sets that ``optimized`` keeps."""

Report = Callable[[str, int, int], None]
_SELECTION, _GRID_SETS, _CANDIDATES, _FINAL_SETS, _INITS = range(5)  # independent random streams


@dataclass(frozen=True)
class BaselineResult:
    """One baseline's held-out evaluation and the settings that won the grid search.

    Attributes:
        kind: one of :data:`BASELINES`.
        evaluation: accuracies of the held-out models on the whole test split. For ``knn``, one
            entry per random draw, and ``before`` equals ``after`` (nothing is trained).
        lr: the winning constant step size, ``"learned"`` for the distilled set's schedule, or
            ``None`` for ``knn``.
        epochs: the winning number of epochs (``None`` for ``knn``).
        grid: mean selection accuracy per grid cell, e.g. ``{"lr=0.01,epochs=3": 0.81}``.
        details: kind-specific numbers (``optimized``: candidate scores; ``knn``: k-means k-NN).
    """

    kind: str
    evaluation: EvalResult
    lr: float | str | None
    epochs: int | None
    grid: dict[str, float] = field(default_factory=dict)
    details: dict[str, float | int] = field(default_factory=dict)

    def summary(self) -> dict[str, float | int | str | None]:
        """Accuracy mean, std, mean before training, model count, winning ``lr`` and ``epochs``."""
        return {**self.evaluation.summary(), "lr": self.lr, "epochs": self.epochs}


@dataclass(frozen=True)
class _Schedule:
    """One grid cell: a step size (or ``"learned"``), epochs, the step sizes ``[S·epochs]`` and, for
    a learned schedule with momenta, the momenta ``[S·epochs]``."""

    lr: float | str
    epochs: int
    lrs: Tensor
    momenta: Tensor | None = None

    @property
    def key(self) -> str:
        return f"lr={self.lr},epochs={self.epochs}"


def check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """The baseline kinds asked for (``"all"``: every one), without duplicates, in :data:`BASELINES` order.

    Raises:
        DDSecError: an unknown kind.
    """
    asked = set(kinds)
    unknown = sorted(asked - set(BASELINES) - {"all"})
    if unknown:
        raise DDSecError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)} or all")
    return tuple(k for k in BASELINES if k in asked or "all" in asked)


def _generator(seed: int, stream: int, index: int = 0) -> torch.Generator:
    """A CPU generator for draw ``index`` of random stream ``stream``, well mixed from ``seed``."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def knn_accuracy(images: Tensor, labels: Tensor, test: ImageDataset) -> float:
    """Test accuracy of 1-nearest-neighbour among ``images`` float ``[S, N, C, H, W]``, labels int64 ``[S, N]``."""
    from sklearn.neighbors import KNeighborsClassifier

    points = images.reshape(-1, test.images[0].numel()).cpu().numpy()
    knn = KNeighborsClassifier(n_neighbors=1).fit(points, labels.reshape(-1).cpu().numpy())
    return float(knn.score(test.images.flatten(1).numpy(), test.labels.numpy()))


def _schedules(
    steps: int, epochs: int, learned_lrs: Tensor | None, lrs: Sequence[float], epochs_grid: Sequence[int],
    learned_momenta: Tensor | None = None,
) -> list[_Schedule]:
    """The grid: the learned schedule (with its own ``epochs`` and momenta) first, then every ``lr × epochs``."""
    momenta = None if learned_momenta is None else learned_momenta.detach().float().cpu()
    cells = [] if learned_lrs is None else [_Schedule("learned", epochs, learned_lrs.detach().float().cpu(), momenta)]
    return cells + [_Schedule(lr, e, torch.full((steps * e,), float(lr))) for lr in lrs for e in epochs_grid]


@dataclass(frozen=True)
class _Trainer:
    """Trains held-out models on image sets the way a distilled set is evaluated.

    Attributes:
        labels: int64 ``[S, N]``, class-major, shared by every image set.
        seed: the models of set ``i`` come from stream ``(seed, inits, i)``, the same for every
            schedule, so grid cells and candidates compare the same initial weights.
    """

    model: nn.Module
    heldout: InitDistribution
    labels: Tensor
    seed: int
    device: torch.device | str

    def evaluate(
        self,
        sets: Iterable[tuple[Tensor, int]],
        schedule: _Schedule,
        test_images: Tensor,
        test_labels: Tensor,
        report: Report | None = None,
        total: int = 0,
    ) -> EvalResult:
        """Train on each set with one schedule; concatenate the models' accuracies.

        Args:
            sets: pairs of images float ``[S, N, C, H, W]`` and how many models train on them.
            test_images: float ``[n, C, H, W]``; test_labels: int64 ``[n]``.
            report: called as ``report("evaluate", i + 1, total)`` after set ``i``.
        """
        before, after = [], []
        for i, (images, n_models) in enumerate(sets):
            momenta = None if schedule.momenta is None else schedule.momenta.to(self.device)
            synthetic = SyntheticSet.from_lrs(images.to(self.device), self.labels.to(self.device),
                                              schedule.lrs.to(self.device), schedule.epochs, momenta)
            result = evaluate_synthetic(self.model, self.heldout, synthetic, test_images, test_labels,
                                        n_models=n_models, generator=_generator(self.seed, _INITS, i))
            before.append(result.before)
            after.append(result.after)
            if report is not None:
                report("evaluate", i + 1, total)
        return EvalResult(torch.cat(before), torch.cat(after))


def _spread(n_models: int, n_sets: int) -> list[int]:
    """``n_models`` split as evenly as possible over ``n_sets`` (earlier sets get the extra ones)."""
    return [n_models // n_sets + (i < n_models % n_sets) for i in range(n_sets)]


def _validate(kind: str, steps: int, epochs: int, ipc: int, learned_lrs: Tensor | None, n_models: int,
              lrs: Sequence[float], epochs_grid: Sequence[int], grid_models: int, candidates: int) -> None:
    check_kinds([kind])
    for name, value in {"steps": steps, "epochs": epochs, "ipc": ipc, "n_models": n_models,
                        "grid_models": grid_models, "candidates": candidates}.items():
        if value < 1:
            raise DDSecError(f"{name} must be at least 1, got {value}")
    if any(not lr > 0 for lr in lrs) or any(e < 1 for e in epochs_grid):
        raise DDSecError(f"grid step sizes must be positive and epochs at least 1, got {lrs} × {epochs_grid}")
    if learned_lrs is None and not (lrs and epochs_grid):
        raise DDSecError("the step-size × epochs grid is empty")
    if learned_lrs is not None and tuple(learned_lrs.shape) != (steps * epochs,):
        raise DDSecError(f"learned_lrs must be [steps·epochs] = [{steps * epochs}], got {tuple(learned_lrs.shape)}")


def run_baseline(
    kind: str,
    *,
    model: nn.Module,
    heldout: InitDistribution,
    train: ImageDataset,
    test: ImageDataset,
    steps: int,
    epochs: int,
    ipc: int,
    learned_lrs: Tensor | None = None,
    learned_momenta: Tensor | None = None,
    n_models: int = 20,
    seed: int = 0,
    device: torch.device | str = "cpu",
    lrs: Sequence[float] = GRID_LRS,
    epochs_grid: Sequence[int] = GRID_EPOCHS,
    grid_models: int = 5,
    grid_images: int = 2000,
    candidates: int = 25,
    kmeans_n_init: int = 3,
    random_grid: dict[str, float] | None = None,
    on_progress: Report | None = None,
) -> BaselineResult:
    """Evaluate one baseline with the size of a distilled set (``S`` steps × ``classes·ipc`` images).

    Args:
        kind: one of :data:`BASELINES`.
        model: the architecture (eval mode, on ``device``).
        heldout: held-out ``p(θ0)``, as for the distilled set (see ``ddsec.distill.build_inits``).
            With a fixed or pretrained init, each fixed image set is trained on one model only.
        train: real training images (the baselines' source); test: the evaluation split.
        steps: ``S``; epochs: the distilled set's ``E`` (paired with ``learned_lrs``); ipc: images
            per class per step.
        learned_lrs: float ``[S·E]``, the distilled set's step sizes: the grid's ``learned`` cell.
        learned_momenta: float ``[S·E]``, the distilled set's momenta, if it has them: the
            ``learned`` cell then trains with them too.
        n_models: held-out models in the final evaluation (``random``: one fresh image set each;
            ``optimized``: spread over the kept sets; ``knn``: random draws).
        seed: drives every random choice (image draws, initial weights, test subset, k-means).
        lrs, epochs_grid: the constant step sizes and epochs of the grid.
        grid_models: models per grid cell and per ``optimized`` candidate (for ``random`` and
            ``optimized`` cells: random image sets, one model each).
        grid_images: size of the fixed random test subset used for every selection.
        candidates: random sets ``optimized`` scores; it keeps the best :data:`KEEP_FRACTION`.
        kmeans_n_init: k-means restarts per class.
        random_grid: for ``optimized``, the :attr:`BaselineResult.grid` of a ``random`` run with
            the same arguments: it is the grid ``optimized`` would search, so the search is skipped.
        on_progress: called as ``on_progress(stage, done, total)`` with stage ``"grid"``,
            ``"candidates"``, ``"evaluate"`` or ``"knn"``.

    Raises:
        DDSecError: an unknown kind, a bad setting, or a class with fewer than ``ipc·S`` images.
    """
    _validate(kind, steps, epochs, ipc, learned_lrs, n_models, lrs, epochs_grid, grid_models, candidates)
    if kind == "knn":
        return _knn_baseline(train, test, steps, ipc, n_models=n_models, seed=seed, kmeans_n_init=kmeans_n_init,
                             report=on_progress)
    # a held-out population smaller than the model counts is used whole
    grid_models, n_models = (heldout_count(count, heldout, flag="--models")[0] for count in (grid_models, n_models))
    setting = _Setting(train, steps, ipc, seed, heldout.kind in FIXED_KINDS, grid_models, n_models, candidates,
                       kmeans_n_init)
    strategy = TRAINED_BASELINES[kind](setting)
    trainer = _Trainer(model, heldout, class_major_labels(train.num_classes, ipc, steps), seed, device)
    pick = torch.randperm(len(test), generator=_generator(seed, _SELECTION))[:grid_images]
    selection = (test.images[pick], test.labels[pick])
    schedules = _schedules(steps, epochs, learned_lrs, lrs, epochs_grid, learned_momenta)
    if random_grid is not None and strategy.grid_of == "random":
        best, grid = _reuse_grid(schedules, random_grid)
    else:
        best, grid = _grid_search(trainer, strategy.grid_sets(), schedules, selection, on_progress)

    def score(images: Tensor, models: int) -> float:
        return float(trainer.evaluate([(images, models)], best, *selection).after.mean())

    final, total, details = strategy.final_sets(score, on_progress)
    evaluation = trainer.evaluate(final, best, test.images, test.labels, report=on_progress, total=total)
    return BaselineResult(kind, evaluation, best.lr, best.epochs, grid, details)


@dataclass(frozen=True)
class _Setting:
    """What a step-trained baseline draws its image sets from (see :func:`run_baseline`).

    Attributes:
        fixed: the held-out init is one fixed model, so each image set trains one model.
    """

    train: ImageDataset
    steps: int
    ipc: int
    seed: int
    fixed: bool
    grid_models: int
    n_models: int
    candidates: int
    kmeans_n_init: int

    def real_sets(self, stream: int, count: int) -> Iterator[Tensor]:
        """``count`` random real sets ``[S, classes·ipc, C, H, W]`` of random stream ``stream``, drawn lazily."""
        return (real_images_per_class(self.train, self.ipc, self.steps, _generator(self.seed, stream, i))
                for i in range(count))


Score = Callable[[Tensor, int], float]
"""``score(images [S, N, C, H, W], models)``: mean selection accuracy of ``models`` models trained
on ``images`` with the winning schedule."""


class TrainedBaseline(Protocol):
    """One step-trained baseline: the image sets the shared step-size search trains on, and the
    sets of the final evaluation (each with how many held-out models train on it)."""

    grid_of: str
    """The baseline whose grid search this one repeats exactly (so ``random_grid`` may stand in
    for it), or ``""``."""

    def grid_sets(self) -> list[tuple[Tensor, int]]:
        """The image sets of every grid cell."""
        ...

    def final_sets(self, score: Score, report: Report | None) -> tuple[Iterable[tuple[Tensor, int]], int, dict]:
        """``(sets, how many, details)`` of the final evaluation, chosen with ``score`` where the baseline selects."""
        ...


class RandomReal:
    """``random``: fresh random real images of each class for every model."""

    grid_of = "random"

    def __init__(self, setting: _Setting) -> None:
        self.setting = setting

    def grid_sets(self) -> list[tuple[Tensor, int]]:
        return [(images, 1) for images in self.setting.real_sets(_GRID_SETS, self.setting.grid_models)]

    def final_sets(self, score: Score, report: Report | None) -> tuple[Iterable[tuple[Tensor, int]], int, dict]:
        count = self.setting.n_models
        return ((images, 1) for images in self.setting.real_sets(_FINAL_SETS, count)), count, {}


class OptimizedReal(RandomReal):
    """``optimized``: the random grid, then the best :data:`KEEP_FRACTION` of ``candidates`` random
    real sets by selection accuracy, the held-out models spread over them."""

    def final_sets(self, score: Score, report: Report | None) -> tuple[Iterable[tuple[Tensor, int]], int, dict]:
        s = self.setting
        per_candidate = 1 if s.fixed else s.grid_models
        kept, details = _best_candidates(list(s.real_sets(_CANDIDATES, s.candidates)),
                                         lambda images: score(images, per_candidate), report)
        counts = [1] * len(kept) if s.fixed else _spread(s.n_models, len(kept))
        final = [(images, m) for images, m in zip(kept, counts) if m > 0]
        return final, len(final), details


class Summary:
    """One summary image set (``kmeans`` centroids, the class ``average``) that every model trains on."""

    grid_of = ""

    def __init__(self, setting: _Setting, images: Tensor) -> None:
        self.setting, self.images = setting, images

    def grid_sets(self) -> list[tuple[Tensor, int]]:
        return [(self.images, 1 if self.setting.fixed else self.setting.grid_models)]

    def final_sets(self, score: Score, report: Report | None) -> tuple[Iterable[tuple[Tensor, int]], int, dict]:
        return [(self.images, 1 if self.setting.fixed else self.setting.n_models)], 1, {}


TRAINED_BASELINES: dict[str, Callable[[_Setting], TrainedBaseline]] = {
    "random": RandomReal,
    "optimized": OptimizedReal,
    "kmeans": lambda s: Summary(s, kmeans_images(s.train, s.ipc, s.steps, seed=s.seed, n_init=s.kmeans_n_init)),
    "average": lambda s: Summary(s, average_images(s.train, s.ipc, s.steps)),
}
"""Each step-trained baseline by kind; ``knn`` trains nothing and is :func:`_knn_baseline`."""


def _reuse_grid(schedules: list[_Schedule], grid: dict[str, float]) -> tuple[_Schedule, dict[str, float]]:
    """The best schedule of an already searched ``grid`` (which must have exactly these cells)."""
    if set(grid) != {s.key for s in schedules}:
        raise DDSecError(f"random_grid has cells {sorted(grid)}, not this grid's {[s.key for s in schedules]}")
    return max(schedules, key=lambda s: grid[s.key]), dict(grid)


def _grid_search(
    trainer: _Trainer,
    sets: list[tuple[Tensor, int]],
    schedules: list[_Schedule],
    selection: tuple[Tensor, Tensor],
    report: Report | None,
) -> tuple[_Schedule, dict[str, float]]:
    """The schedule with the best mean accuracy on the selection images, and every cell's accuracy."""
    grid: dict[str, float] = {}
    for i, schedule in enumerate(schedules):
        grid[schedule.key] = float(trainer.evaluate(sets, schedule, *selection).after.mean())
        if report is not None:
            report("grid", i + 1, len(schedules))
    return max(schedules, key=lambda s: grid[s.key]), grid


def _best_candidates(
    sets: list[Tensor], score: Callable[[Tensor], float], report: Report | None,
) -> tuple[list[Tensor], dict[str, float | int]]:
    """Keep the best :data:`KEEP_FRACTION` of the candidate ``sets`` by ``score``.

    Returns:
        The kept sets (best first), each ``[S, classes·ipc, C, H, W]``, and details: how many
        were drawn and kept, the mean selection accuracy of all candidates and of the kept ones.
    """
    scores = []
    for i, images in enumerate(sets):
        scores.append(score(images))
        if report is not None:
            report("candidates", i + 1, len(sets))
    keep = max(1, round(KEEP_FRACTION * len(sets)))
    order = sorted(range(len(sets)), key=lambda i: -scores[i])[:keep]
    details = {"candidates": len(sets), "kept": keep, "selection_acc_all": float(np.mean(scores)),
               "selection_acc_kept": float(np.mean([scores[i] for i in order]))}
    return [sets[i] for i in order], details


def _knn_baseline(
    train: ImageDataset, test: ImageDataset, steps: int, ipc: int, *, n_models: int, seed: int, kmeans_n_init: int,
    report: Report | None,
) -> BaselineResult:
    """1-NN among ``n_models`` random real draws of a distilled set's size, plus 1-NN among k-means centroids."""
    labels = class_major_labels(train.num_classes, ipc, steps)
    accs = []
    for i in range(n_models):
        images = real_images_per_class(train, ipc, steps, _generator(seed, _FINAL_SETS, i))
        accs.append(knn_accuracy(images, labels, test))
        if report is not None:
            report("knn", i + 1, n_models)
    centroids = kmeans_images(train, ipc, steps, seed=seed, n_init=kmeans_n_init)
    acc = torch.tensor(accs)
    details = {"draws": n_models, "kmeans_knn_acc": knn_accuracy(centroids, labels, test)}
    return BaselineResult("knn", EvalResult(acc, acc), None, None, {}, details)
