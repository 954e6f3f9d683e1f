"""The one resumable outer loop behind every distiller: iterations, time budgets, checkpoints, resume.

A distiller is a :class:`Method`, a stateful object whose :meth:`~Method.step` runs one outer
iteration and whose named tensors are its whole state: DD's meta-gradient and Adam step
(:mod:`ddsec.engine.outer`), the condensation methods' matching and image-SGD step
(:mod:`ddsec.condense.loop`). :func:`run_loop` gives every method the same rules:

- one CPU generator, seeded once, drives every draw and is checkpointed;
- a time budget times the first iterations, then ``replan`` fixes the count (kept in checkpoints,
  so a resumed run keeps the plan of its first start);
- checkpoints (:mod:`ddsec.engine.checkpoint`, one format) are atomic, written every
  ``checkpoint_every`` iterations, at least every ``checkpoint_seconds``, after the last
  iteration, on Ctrl-C or a lost peer (then re-raised), and before a NaN/inf stop;
- ``resume`` needs a checkpoint with the same fingerprint (else one line, never a silent fresh start);
- under ``torchrun`` rank 0 alone writes checkpoints and gets progress; every rank follows its plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from ddsec.engine.checkpoint import (
    DEFAULT_CHECKPOINT_SECONDS,
    CheckpointSchedule,
    LoopState,
    load_checkpoint,
    refuse_other_settings,
    require_checkpoint,
    save_checkpoint,
)
from ddsec.engine.distributed import PeerLostError, broadcast_, world
from ddsec.errors import DDSecError, NonFiniteError


@dataclass(frozen=True)
class StepOutcome:
    """What one call of :meth:`Method.step` did.

    Attributes:
        loss: the iteration's loss.
        skipped: the update was skipped (a back-off after a NaN/inf): the state is unchanged and
            the loop runs the iteration again with fresh draws.
    """

    loss: float
    skipped: bool = False


class Method(Protocol):
    """One distiller's outer iteration and its state."""

    def step(self, iteration: int, generator: torch.Generator) -> StepOutcome:
        """Run outer iteration ``iteration`` (0-based), drawing from ``generator``.

        Raises:
            NonFiniteError: NaN/inf, the state left as it was; the message may hold the
                placeholders ``{iteration}`` (1-based) and ``{where}`` (where the last good state
                is saved), which the loop fills in.
        """
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """The whole state by name (live tensors are fine: the loop copies when it saves)."""
        ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Take ``state`` from a checkpoint (on the loop's ``device``).

        Raises:
            DDSecError: the state does not fit this method (e.g. a set of another shape).
        """
        ...

    def use_plan(self, plan: dict) -> None:
        """Follow a time budget's ``plan`` (e.g. its ``decay_every``), made now or read from a checkpoint."""
        ...


@dataclass(frozen=True)
class Tick:
    """One event of the loop, as given to the progress callback.

    Attributes:
        iteration: iterations completed (on ``"resume"``: where the run resumes).
        iterations: total planned.
        loss: the loss of this iteration (``nan`` on a resume before any iteration).
        event: ``""``, ``"checkpoint"`` (one was written after this iteration), ``"backoff"``
            (the update was skipped) or ``"resume"`` (once, before the first iteration of a resumed run).
        planned: ``False`` while ``iterations`` is provisional (a time budget not planned yet).
    """

    iteration: int
    iterations: int
    loss: float
    event: str = ""
    planned: bool = True


@dataclass(frozen=True)
class LoopResult:
    """The loss history (float32 ``[iterations]``), where the run resumed, the skipped updates and
    a time budget's plan (``iterations``, ``decay_every``, ``seconds_per_iteration``)."""

    losses: Tensor
    resumed_from: int = 0
    skipped: int = 0
    plan: dict = field(default_factory=dict)


def run_loop(
    method: Method,
    *,
    iterations: int | None,
    seed: int,
    fingerprint: dict,
    device: torch.device | str = "cpu",
    replan: Callable[[float], tuple[int, int | None]] | None = None,
    probe: int = 3,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 100,
    checkpoint_seconds: float | None = DEFAULT_CHECKPOINT_SECONDS,
    resume: bool = False,
    on_progress: Callable[[Tick], None] | None = None,
) -> LoopResult:
    """Run ``method`` for ``iterations`` outer iterations (or as many as a time budget allows).

    Args:
        method: the distiller (see :class:`Method`).
        iterations: total outer iterations (a resumed run continues up to this number); ``None``
            with ``replan``: chosen by it once the first iterations are timed.
        seed: seeds the generator behind every draw.
        fingerprint: JSON-able settings stored in checkpoints; resuming with other ones fails.
        device: where a resumed state is loaded.
        replan: for a time budget (:func:`ddsec.budget.planner`): called once with the mean
            seconds of ``probe`` iterations after the first, it returns ``(iterations, decay_every)``.
        probe: iterations timed before ``replan``.
        checkpoint_path: where to write checkpoints; ``None`` disables them.
        checkpoint_every: iterations between checkpoints.
        checkpoint_seconds: also checkpoint whenever this much wall-clock time has passed since
            the last checkpoint (``None``: by iterations only).
        resume: continue from ``checkpoint_path``, which must exist.
        on_progress: called after every iteration and back-off (on rank 0 only, under ``torchrun``).

    Raises:
        NonFiniteError: the method met NaN/inf; the last good state is checkpointed first.
        DDSecError: ``resume`` without a checkpoint, or a checkpoint from a run with other settings.
        KeyboardInterrupt, PeerLostError: re-raised after checkpointing the last completed iteration.
    """
    if (iterations is None and replan is None) or (iterations is not None and iterations < 1):
        raise ValueError("give a positive iteration count or a replan")
    here = world()
    report = on_progress if here.is_main else None
    generator = torch.Generator().manual_seed(seed)
    schedule = CheckpointSchedule(checkpoint_every, checkpoint_seconds)
    losses: list[float] = []
    plan: dict = {}
    start = 0
    if resume:
        saved = load_checkpoint(require_checkpoint(checkpoint_path), device=device)
        refuse_other_settings(f"checkpoint {checkpoint_path}", saved.fingerprint, fingerprint)
        try:
            method.load_state_dict(saved.state)
        except DDSecError as exc:
            raise DDSecError(f"checkpoint {checkpoint_path}: {exc}") from None
        generator.set_state(saved.generator_state)
        losses, start, plan = saved.losses.tolist(), saved.iteration, dict(saved.plan)
        if plan:
            iterations = plan["iterations"]
            method.use_plan(plan)
    if iterations is None:  # provisional, until the plan is made after the first timed iterations
        iterations = start + probe + 2
    next_draws = generator.get_state()  # the generator at the start of the first unfinished iteration

    def planned() -> bool:
        return replan is None or bool(plan)

    def save(iteration: int) -> None:
        if checkpoint_path is not None and here.is_main:
            save_checkpoint(checkpoint_path, LoopState(method.state_dict(), next_draws, iteration,
                                                       torch.tensor(losses, dtype=torch.float32), fingerprint, plan))
        schedule.saved()

    if resume and report is not None:
        report(Tick(start, iterations, losses[-1] if losses else math.nan, "resume", planned()))
    iteration, skipped = start, 0
    timed_from: float | None = None  # the end of this process's first iteration, for replan
    try:
        while iteration < iterations:
            next_draws = generator.get_state()
            try:
                outcome = method.step(iteration, generator)
            except NonFiniteError as exc:
                save(iteration)
                where = f"; the last good state is saved in {checkpoint_path}" if checkpoint_path is not None else ""
                message = str(exc).replace("{iteration}", str(iteration + 1)).replace("{where}", where)
                raise NonFiniteError(message) from None
            if outcome.skipped:
                skipped += 1
                if report is not None:
                    report(Tick(iteration, iterations, outcome.loss, "backoff", planned()))
                continue
            iteration += 1
            losses.append(outcome.loss)
            next_draws = generator.get_state()
            if replan is not None and not plan:
                if timed_from is None:
                    timed_from = time.perf_counter()
                elif iteration - start == probe + 1:
                    plan = _plan(replan, (time.perf_counter() - timed_from) / probe, iteration)
                    iterations = plan["iterations"]
                    method.use_plan(plan)
            event = ""
            if iteration == iterations or (checkpoint_path is not None and schedule.due(iteration)):
                save(iteration)
                event = "checkpoint" if checkpoint_path is not None else ""
            if report is not None:
                report(Tick(iteration, iterations, outcome.loss, event, planned()))
    except (KeyboardInterrupt, PeerLostError):
        save(iteration)
        raise
    return LoopResult(torch.tensor(losses, dtype=torch.float32), start, skipped, plan)


def _plan(replan: Callable[[float], tuple[int, int | None]], seconds: float, done: int) -> dict:
    """A time budget's plan from the measured ``seconds`` per iteration; rank 0's under ``torchrun``."""
    chosen, every = replan(seconds)
    if world().size > 1:
        shared = torch.tensor([chosen, every or 0, seconds], dtype=torch.float64)
        broadcast_([shared])
        chosen, every, seconds = int(shared[0]), int(shared[1]) or None, float(shared[2])
    return {"iterations": max(chosen, done), "decay_every": every, "seconds_per_iteration": seconds}
