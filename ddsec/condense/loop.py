"""The outer loop shared by the condensation methods: SGD on images, checkpoints, resume.

Gradient matching (Zhao et al., arXiv 2006.05929) and distribution matching (arXiv 2110.04181)
both learn the synthetic images with SGD with momentum 0.5; a method is a :data:`Step` that
runs one outer iteration (sampling a fresh network, matching, updating the images one or more
times with :class:`ImageSGD`). The loop reports through a callback (it never prints),
checkpoints atomically every ``checkpoint_every`` iterations, at least every
``checkpoint_seconds`` and on Ctrl-C (then re-raises), resumes exactly, and stops with
:class:`~ddsec.errors.NonFiniteError` on a NaN/inf loss or image, the last good state saved. Given
a time budget instead of an iteration count, it times its first iterations and fills the budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ddsec.condense.checkpoint import ImageState, load_state, save_state
from ddsec.engine.checkpoint import (
    DEFAULT_CHECKPOINT_SECONDS,
    CheckpointSchedule,
    refuse_other_settings,
    require_checkpoint,
)
from ddsec.errors import NonFiniteError

Step = Callable[[ImageState, torch.Generator, int], tuple[ImageState, float]]
"""``step(state, generator, iteration) -> (new state, matching loss)``: one outer iteration."""


@dataclass(frozen=True)
class ImageSGD:
    """SGD with momentum on the synthetic images (PyTorch's convention: no dampening).

    Attributes:
        lr: learning rate.
        momentum: momentum factor.
    """

    lr: float
    momentum: float = 0.5

    def __call__(self, state: ImageState, grad: Tensor) -> ImageState:
        """The state after one step along ``grad`` (float ``[N, C, H, W]``)."""
        velocity = self.momentum * state.momentum + grad.detach()
        return ImageState((state.images - self.lr * velocity).detach(), velocity)


@dataclass(frozen=True)
class CondenseProgress:
    """One completed outer iteration, as given to the progress callback.

    Attributes:
        iteration: iterations completed (1-based).
        iterations: total planned.
        loss: the iteration's matching loss.
        images: the current images ``[N, C, H, W]`` (live: copy before keeping).
        event: ``"checkpoint"`` when a checkpoint was written after this iteration, ``"resume"``
            once before the first iteration of a resumed run (``iteration`` is where it resumes),
            else ``""``.
    """

    iteration: int
    iterations: int
    loss: float
    images: Tensor
    event: str = ""


@dataclass(frozen=True)
class CondenseResult:
    """The learned images ``[N, C, H, W]``, the loss history (float32 ``[iterations]``) and, for a
    time budget, the plan (``iterations``, ``seconds_per_iteration``)."""

    images: Tensor
    losses: Tensor
    resumed_from: int = 0
    plan: dict = field(default_factory=dict)


def _resume(path: Path | None, fingerprint: dict, device: torch.device
            ) -> tuple[ImageState, Tensor, list[float], dict]:
    state, generator_state, losses, stored, plan = load_state(require_checkpoint(path), device)
    refuse_other_settings(f"checkpoint {path}", stored, fingerprint)
    return state, generator_state, losses, plan


def condense(
    step: Step,
    initial: Tensor,
    *,
    iterations: int | None,
    seed: int,
    fingerprint: dict,
    replan: Callable[[float], tuple[int, int | None]] | None = None,
    probe: int = 3,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 10,
    checkpoint_seconds: float | None = DEFAULT_CHECKPOINT_SECONDS,
    on_progress: Callable[[CondenseProgress], None] | None = None,
) -> CondenseResult:
    """Run ``iterations`` outer iterations of ``step`` from ``initial`` images.

    Args:
        step: one outer iteration of a method.
        initial: float ``[N, C, H, W]`` starting images (ignored when resuming).
        iterations: total outer iterations; ``None`` with ``replan``: chosen by it.
        seed: seeds the CPU generator behind every random draw of the run.
        fingerprint: settings that must not change between a run and its resumption.
        replan: for a time budget (:func:`ddsec.budget.planner`): called once with the mean
            seconds of ``probe`` iterations after the first, it returns the iteration count (its
            decay interval is unused: these methods do not decay); kept in checkpoints, so a
            resumed run keeps the count of its first start.
        probe: iterations timed before ``replan``.
        checkpoint_path: where to checkpoint (``None``: never).
        resume: continue from ``checkpoint_path``.
        checkpoint_every: iterations between checkpoints.
        checkpoint_seconds: also checkpoint whenever this much wall-clock time has passed since
            the last checkpoint (``None``: by iterations only).
        on_progress: called after every iteration.

    Raises:
        NonFiniteError: a NaN/inf loss or image (the last good state is checkpointed first).
        KeyboardInterrupt: re-raised after checkpointing the last completed iteration.
    """
    path = None if checkpoint_path is None else Path(checkpoint_path)
    generator = torch.Generator().manual_seed(seed)
    state = ImageState(initial.detach(), torch.zeros_like(initial))
    if (iterations is None) == (replan is None) or (iterations is not None and iterations < 1):
        raise ValueError("give a positive iteration count or a replan, not both")
    losses: list[float] = []
    plan: dict = {}
    if resume:
        state, generator_state, losses, plan = _resume(path, fingerprint, initial.device)
        generator.set_state(generator_state)
    first = len(losses)
    iterations = plan.get("iterations", iterations or first + probe + 2)  # provisional until planned
    next_draws = generator.get_state()
    schedule = CheckpointSchedule(checkpoint_every, checkpoint_seconds)
    if resume and on_progress is not None:
        on_progress(CondenseProgress(first, iterations, losses[-1] if losses else float("nan"), state.images, "resume"))

    def save() -> None:
        if path is not None:
            save_state(path, state, next_draws, losses, fingerprint, plan)
        schedule.saved()

    timed_from: float | None = None
    iteration = first
    try:
        while iteration < iterations:
            next_draws = generator.get_state()
            new_state, loss = step(state, generator, iteration)
            if not (math.isfinite(loss) and bool(torch.isfinite(new_state.images).all())):
                save()
                raise NonFiniteError(f"the matching loss or the images became NaN/inf at iteration {iteration + 1};"
                                     " the last good state is checkpointed; lower --lr and start over with --force")
            state = new_state
            losses.append(loss)
            next_draws = generator.get_state()
            iteration = done = iteration + 1
            if replan is not None and not plan:
                if timed_from is None:
                    timed_from = time.perf_counter()
                elif done - first == probe + 1:
                    seconds = (time.perf_counter() - timed_from) / probe
                    iterations = max(replan(seconds)[0], done)
                    plan = {"iterations": iterations, "seconds_per_iteration": seconds}
            event = ""
            if path is not None and done < iterations and schedule.due(done):
                save()
                event = "checkpoint"
            if on_progress is not None:
                on_progress(CondenseProgress(done, iterations, loss, state.images, event))
    except KeyboardInterrupt:
        save()
        raise
    return CondenseResult(state.images, torch.tensor(losses, dtype=torch.float32), first, plan)
