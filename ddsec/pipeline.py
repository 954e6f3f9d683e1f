"""One run pipeline for every front end that learns a set with the outer loop (distill, adapt, poison).

A front end is a :class:`Task`: its starting set, what the set is learned against (the objective
and the outer loop's hooks), the figure its progress reports show, and what it makes of the
learned set (held-out evaluation and the exported file). :func:`run` does the rest once for all:
the outer loop with the job's settings, checkpoints and resume, a time budget's plan, the run's
timing, the quick held-out figure in progress reports, and the rank-0 gate of a distributed run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import torch
from torch import Tensor

from ddsec.budget import planner
from ddsec.engine import (
    DEFAULT_CHECKPOINT_SECONDS,
    DistillResult,
    Dual,
    ImageConstraint,
    InnerOptimizer,
    InnerStep,
    Objective,
    Progress,
    SyntheticSet,
    distill,
    distinct_draws,
    use_compile,
    world,
)
from ddsec.engine.population import Params

if TYPE_CHECKING:
    from ddsec.distill import DistillJob

Outcome = TypeVar("Outcome", covariant=True)


@dataclass
class Setup:
    """What a task learns against: the objective and the outer loop's optional hooks (see
    :func:`ddsec.engine.distill`; ``None``: the paper's plain loop)."""

    objective: Objective
    constraint: ImageConstraint | None = None
    sample_inner: Callable[[torch.Generator], tuple[InnerOptimizer, list[InnerStep]]] | None = None
    dual: Dual | None = None
    penalty: Callable[[Params, Tensor, Tensor], Tensor] | None = None


class Task(Protocol, Generic[Outcome]):
    """One front end over the shared pipeline."""

    job: DistillJob

    def start(self) -> SyntheticSet:
        """The set the outer loop starts from."""
        ...

    def setup(self, start: SyntheticSet) -> Setup:
        """The objective and hooks for a run from ``start``."""
        ...

    def quick_figure(self, synthetic: SyntheticSet) -> float:
        """The held-out figure shown during the run (a quick sample of models and test images)."""
        ...

    def finish(self, result: DistillResult, seconds: float) -> Outcome:
        """Evaluate the learned set on held-out models and build the exportable outcome (rank 0)."""
        ...


def optimize(job: DistillJob, start: SyntheticSet, setup: Setup, *, checkpoint_path: str | Path | None,
             resume: bool, checkpoint_seconds: float | None,
             on_progress: Callable[[Progress], None] | None) -> DistillResult:
    """The outer loop with the job's settings; checkpoints carry ``job.fingerprint``."""
    cfg = job.cfg
    replan = None if cfg.iterations is not None else planner(cfg.budget, cfg.decay_fraction, cfg.decay_every)
    objective = setup.objective
    return distill(
        objective, start, iterations=cfg.iterations, replan=replan, n_models=distinct_draws(objective.init, cfg.n_models),
        lr=cfg.lr, rates={"lr": cfg.lr_step_sizes, "momentum": cfg.lr_momenta}, decay_every=cfg.decay_every,
        decay_factor=cfg.decay_factor, mode=cfg.mode, keep_graphs=cfg.keep_graphs, theta_every=cfg.theta_every,
        compile=cfg.mode == "hvp" and use_compile(cfg.compile, job.device), seed=cfg.seed,
        checkpoint_path=checkpoint_path, resume=resume, checkpoint_seconds=checkpoint_seconds,
        fingerprint=job.fingerprint, constraint=setup.constraint, sample_inner=setup.sample_inner, dual=setup.dual,
        penalty=setup.penalty, on_progress=on_progress,
    )


def quick_check_due(progress: Progress, eval_every: int | None, eval_times: int = 0) -> bool:
    """Whether a run measures its quick held-out figure after ``progress``: every ``eval_every``
    iterations (else ``eval_times`` times spread over the run, as planned so far) and at the end,
    never on the resume notice."""
    every = eval_every or (max(1, progress.iterations // eval_times) if eval_times and progress.planned else 0)
    if not every or progress.event == "resume":
        return False
    return progress.iteration % every == 0 or progress.iteration == progress.iterations


def run(
    task: Task[Outcome],
    *,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    checkpoint_seconds: float | None = DEFAULT_CHECKPOINT_SECONDS,
    eval_every: int | None = None,
    eval_times: int = 0,
    on_progress: Callable[[Progress, float | None], None] | None = None,
) -> Outcome | None:
    """Learn ``task``'s set, then evaluate and export it; in a distributed run every rank learns,
    rank 0 alone finishes and returns the outcome, the others return ``None``.

    Args:
        checkpoint_path: where the outer loop checkpoints (``None``: no checkpoints).
        resume: continue from ``checkpoint_path``.
        checkpoint_seconds: also checkpoint at least this often (wall-clock seconds).
        eval_every: every this many iterations, measure the task's quick held-out figure and pass
            it to ``on_progress``.
        eval_times: without ``eval_every``, that many quick checks spread over the run (for a
            time budget, whose iteration count is known only once planned).
        on_progress: called after every outer iteration with the progress and that figure
            (``None`` in between).
    """
    start = task.start()
    setup = task.setup(start)

    def report(progress: Progress) -> None:
        if on_progress is not None:
            due = quick_check_due(progress, eval_every, eval_times)
            on_progress(progress, task.quick_figure(progress.synthetic) if due else None)

    began = time.perf_counter()
    result = optimize(task.job, start, setup, checkpoint_path=checkpoint_path, resume=resume,
                      checkpoint_seconds=checkpoint_seconds, on_progress=report)
    seconds = time.perf_counter() - began
    if not world().is_main:
        return None
    return task.finish(result, seconds)
