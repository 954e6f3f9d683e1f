"""The condensation methods on the shared outer loop: SGD on images.

Gradient matching (Zhao et al., arXiv 2006.05929) and distribution matching (arXiv 2110.04181)
both learn the synthetic images with SGD with momentum 0.5; a method is a :data:`MatchingStep`
that runs one outer iteration (sampling a fresh network, matching, updating the images one or
more times with :class:`ImageSGD`). :func:`condense` runs it on
:func:`ddsec.engine.loop.run_loop`, the loop DD uses too: the same time budgets, checkpoint format,
resume rule and NaN/inf stop (the last good state saved).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ddsec.engine.checkpoint import DEFAULT_CHECKPOINT_SECONDS
from ddsec.engine.loop import StepOutcome, Tick, run_loop
from ddsec.errors import DDSecError, NonFiniteError


@dataclass(frozen=True)
class ImageState:
    """The synthetic images being learned and their SGD momentum.

    Attributes:
        images: float ``[N, C, H, W]``, class-major.
        momentum: float ``[N, C, H, W]``, the momentum buffer (zeros before the first step).
    """

    images: Tensor
    momentum: Tensor


MatchingStep = Callable[[ImageState, torch.Generator, int], tuple[ImageState, float]]
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


class _ImageMethod:
    """A :data:`MatchingStep` as the shared loop's :class:`~ddsec.engine.loop.Method`; its state is
    ``images`` and ``momentum``, both ``[N, C, H, W]``."""

    def __init__(self, step: MatchingStep, initial: Tensor) -> None:
        self.matching_step = step
        self.state = ImageState(initial.detach(), torch.zeros_like(initial))

    def step(self, iteration: int, generator: torch.Generator) -> StepOutcome:
        new_state, loss = self.matching_step(self.state, generator, iteration)
        if not (math.isfinite(loss) and bool(torch.isfinite(new_state.images).all())):
            raise NonFiniteError("the matching loss or the images became NaN/inf at iteration {iteration}{where};"
                                 " lower --lr and start over with --force")
        self.state = new_state
        return StepOutcome(loss)

    def state_dict(self) -> dict[str, Tensor]:
        return {"images": self.state.images, "momentum": self.state.momentum}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        shape = self.state.images.shape
        if any(key not in state or state[key].shape != shape for key in ("images", "momentum")):
            raise DDSecError("it holds images of another shape; start over with --force")
        self.state = ImageState(state["images"], state["momentum"])

    def use_plan(self, plan: dict) -> None:
        """Nothing to follow: these methods do not decay their learning rate."""


def condense(
    step: MatchingStep,
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
        replan: for a time budget (:func:`ddsec.budget.planner`; its decay interval is unused:
            these methods do not decay).
        probe, checkpoint_path, resume, checkpoint_every, checkpoint_seconds: see
            :func:`ddsec.engine.loop.run_loop`.
        on_progress: called after every iteration.

    Raises:
        NonFiniteError: a NaN/inf loss or image (the last good state is checkpointed first).
        KeyboardInterrupt: re-raised after checkpointing the last completed iteration.
    """
    method = _ImageMethod(step, initial)

    def report(tick: Tick) -> None:
        on_progress(CondenseProgress(tick.iteration, tick.iterations, tick.loss, method.state.images, tick.event))

    loop = run_loop(method, iterations=iterations, seed=seed, fingerprint=fingerprint, device=initial.device,
                    replan=replan, probe=probe, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                    checkpoint_seconds=checkpoint_seconds, resume=resume,
                    on_progress=None if on_progress is None else report)
    return CondenseResult(method.state.images, loop.losses, loop.resumed_from, loop.plan)
