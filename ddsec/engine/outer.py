"""The outer loop: Adam on synthetic images and step sizes, over sampled initial weights.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), Algorithm 1: each iteration samples a
batch of real data and ``n`` initial weights ``θ0 ~ p(θ0)``, unrolls the inner steps from each,
and takes one Adam step (betas 0.5, 0.999) on the synthetic images and raw step sizes with the
meta-gradient averaged over the sampled models. The learning rate decays in steps.

The loop reports through a callback (it never prints), checkpoints atomically every
``checkpoint_every`` iterations and at least every ``checkpoint_seconds`` (and when interrupted
or stopped), resumes exactly from a checkpoint (a missing one is an error, never a silent fresh
start), and refuses to write NaN/inf: a non-finite loss or gradient either stops the run
with a clear error, the last good state saved, or backs off (skips the update and halves the
learning rate, at most ``max_backoffs`` times in a row). A constrained objective brings a dual
player (:class:`Dual`, e.g. a Lagrange multiplier): the loop lets it update before every
iteration and checkpoints its state with the rest.

Under ``torchrun`` (see :mod:`ddsec.engine.distributed`) each process samples its own models and
batches, from a generator seeded per ``(iteration, rank)``; the loss and meta-gradients are
averaged over processes before the update, so ``n_models`` is per process and the run equals
one process sampling the union. Rank 0 alone writes checkpoints and gets progress callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
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
from ddsec.engine.distributed import PeerLostError, all_reduce_mean, broadcast_, iteration_seed, world
from ddsec.engine.inner import SGD, InnerOptimizer
from ddsec.engine.learned import LEARNABLES, adam_rates
from ddsec.engine.metagrad import meta_grads
from ddsec.engine.objective import Objective
from ddsec.engine.population import Params
from ddsec.engine.schedule import InnerStep
from ddsec.engine.synthetic import SyntheticSet
from ddsec.errors import DDSecError, NonFiniteError

NONFINITE_POLICIES = ("stop", "backoff")


class ImageConstraint(Protocol):
    """Keeps the synthetic images deliverable (e.g. :class:`ddsec.data.pixels.PixelConstraint`).

    The loop projects the images after every update and takes the meta-gradient at the delivered
    images (applying it to the continuous ones: a straight-through estimator); the result is
    the delivered set.
    """

    def project_(self, images: Tensor) -> None:
        """Move ``images`` ``[S, N, C, H, W]`` into the allowed set, in place."""
        ...

    def deliver(self, images: Tensor) -> Tensor:
        """The images a victim receives (e.g. rounded to 8-bit levels), ``[S, N, C, H, W]``."""
        ...


class Dual(Protocol):
    """The dual player of a constrained objective (e.g. a Lagrange multiplier that grows while a
    constraint is violated and that the objective reads when it builds its targets).

    Before every outer iteration the loop calls :meth:`update`, on rank 0 only in a distributed
    run, whose state then replaces every other rank's; checkpoints hold :meth:`state_dict`, so a
    resumed run continues exactly. A back-off or a resume calls it again with the same
    ``iteration``: the player must then change nothing (it keeps where it last updated in its state).
    """

    period: int
    """Outer iterations between two updates that do real work (e.g. measure the set): a time
    budget's timing spans one whole period, so that the plan counts their cost."""

    def update(self, iteration: int, synthetic: SyntheticSet) -> None:
        """Adjust the state after ``iteration`` completed iterations; ``synthetic`` is the set as
        delivered (live tensors: copy before keeping)."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """The state by name: fixed names and shapes, on the images' device."""
        ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Take ``state`` (from :meth:`state_dict` or a checkpoint)."""
        ...


@dataclass(frozen=True)
class Progress:
    """One completed outer iteration, as given to the progress callback.

    Attributes:
        iteration: iterations completed (1-based).
        iterations: total planned.
        loss: outer loss of this iteration (averaged over the sampled models).
        lr: Adam learning rate used for the images.
        synthetic: the current set (live tensors: copy before keeping).
        event: ``""`` normally, ``"backoff"`` when a non-finite update was skipped,
            ``"checkpoint"`` when a checkpoint was written after this iteration, ``"resume"``
            once before the first iteration of a resumed run (``iteration`` is where it resumes).
        planned: ``False`` while ``iterations`` is provisional (a time budget not planned yet).
    """

    iteration: int
    iterations: int
    loss: float
    lr: float
    synthetic: SyntheticSet
    event: str = ""
    planned: bool = True


@dataclass
class DistillResult:
    """The learned set and the loss history (float32 ``[iterations]``)."""

    synthetic: SyntheticSet
    losses: Tensor
    resumed_from: int = 0
    backoffs: int = 0
    plan: dict = field(default_factory=dict)


def _adam_state(optimizer: torch.optim.Adam, names: list[str]) -> dict[str, Tensor]:
    """Adam's state keyed ``"<group name>.<key>"``; ``names`` names the parameter groups in order."""
    flat = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            flat[f"{names[index]}.{key}"] = torch.as_tensor(value)
    return flat


def _load_adam_state(optimizer: torch.optim.Adam, flat: dict[str, Tensor], names: list[str]) -> None:
    state_dict = optimizer.state_dict()
    state_dict["state"] = {
        index: {k.split(".", 1)[1]: v for k, v in flat.items() if k.split(".", 1)[0] == name}
        for index, name in enumerate(names)
        if any(k.split(".", 1)[0] == name for k in flat)
    }
    optimizer.load_state_dict(state_dict)


def _finite(*tensors: Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def distill(
    objective: Objective,
    synthetic: SyntheticSet,
    *,
    iterations: int | None,
    n_models: int = 1,
    lr: float = 0.01,
    rates: Mapping[str, float | None] | None = None,
    betas: tuple[float, float] = (0.5, 0.999),
    decay_every: int | None = None,
    decay_factor: float = 0.5,
    mode: str = "hvp",
    keep_graphs: bool = False,
    theta_every: int | str | None = None,
    batching: str = "auto",
    compile: bool = False,
    inner_optimizer: InnerOptimizer = SGD(),
    constraint: ImageConstraint | None = None,
    sample_inner: Callable[[torch.Generator], tuple[InnerOptimizer, list[InnerStep]]] | None = None,
    dual: Dual | None = None,
    penalty: Callable[[Params, Tensor, Tensor], Tensor] | None = None,
    replan: Callable[[float], tuple[int, int | None]] | None = None,
    probe: int = 3,
    seed: int = 0,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 100,
    checkpoint_seconds: float | None = DEFAULT_CHECKPOINT_SECONDS,
    resume: bool = False,
    fingerprint: dict | None = None,
    on_nonfinite: str = "stop",
    max_backoffs: int = 5,
    on_progress: Callable[[Progress], None] | None = None,
) -> DistillResult:
    """Learn ``synthetic``'s images and step sizes (and its labels and momenta, if learnable) for ``objective``.

    Args:
        objective: model, ``p(θ0)``, real batches and outer loss.
        synthetic: the starting set; its tensors define dtype and device. Not modified.
        iterations: total outer iterations (a resumed run continues up to this number); ``None``
            with ``replan``: chosen by it once the first iterations are timed.
        n_models: initial weights sampled per iteration (evaluated together, see ``batching``).
        lr: Adam learning rate for the images.
        rates: Adam learning rate of each learned setting by name (``"lr"`` the step sizes,
            ``"momentum"``, ``"labels"``); a setting without one takes its ``rate_from``'s
            (:mod:`ddsec.engine.learned`: the step sizes' and the labels' default to ``lr``, the
            momenta's to the step sizes').
        betas: Adam betas; the paper uses (0.5, 0.999).
        decay_every: multiply every learning rate by ``decay_factor`` every this many iterations.
        decay_factor: see ``decay_every``.
        mode, keep_graphs, theta_every, batching, compile: passed to :func:`ddsec.engine.meta_grads`
            (``theta_every`` and ``compile`` change memory and time, never the gradients beyond
            rounding: leave them out of ``fingerprint``, so a resumed run may change them).
        inner_optimizer: the inner update rule, passed to :func:`ddsec.engine.meta_grads` as its
            ``optimizer`` (default: the paper's SGD with the learned step sizes).
        constraint: keeps the images deliverable (see :class:`ImageConstraint`); ``None``: free.
        sample_inner: draws each iteration's inner optimizer and step plan (e.g. one victim of a
            distribution, MetaPoison style) from the run's generator; replaces ``inner_optimizer``
            and the default replay of the set.
        dual: the objective's dual player (see :class:`Dual`); ``None``: an unconstrained objective.
        penalty: a differentiable term ``penalty(θ0 [M, …], images [S, N, C, H, W], labels)`` on the
            sampled initial weights and the delivered images (e.g. an adaptive attacker's detection
            penalty), added to the outer loss and its image gradient.
        replan: for a time budget: called once with the measured seconds per iteration (the
            mean of ``probe`` iterations after the first) and returning ``(iterations,
            decay_every)``, which replace the given ones; kept in checkpoints, so a resumed run
            keeps the plan of its first start.
        probe: iterations timed before ``replan`` (at least the ``dual``'s period).
        seed: seeds the generator behind every sample (θ0 draws and real batches).
        checkpoint_path: where to write checkpoints; ``None`` disables them.
        checkpoint_every: iterations between checkpoints.
        checkpoint_seconds: also checkpoint whenever this much wall-clock time has passed since
            the last checkpoint (``None``: by iterations only).
        resume: continue from ``checkpoint_path``, which must exist.
        fingerprint: JSON-able settings stored in checkpoints; resuming with different ones fails.
        on_nonfinite: ``"stop"`` or ``"backoff"``.
        max_backoffs: consecutive back-offs before stopping anyway.
        on_progress: called after every iteration (on rank 0 only, in a distributed run).

    Returns:
        The learned set (detached; its images as delivered under ``constraint``) and the loss history.

    Raises:
        NonFiniteError: NaN/inf under ``"stop"`` or after ``max_backoffs`` back-offs; the last
            good state is checkpointed first when ``checkpoint_path`` is set.
        DDSecError: ``resume`` without a checkpoint, or a checkpoint from a run with other settings.
    """
    if (iterations is None and replan is None) or (iterations is not None and iterations < 1) or n_models < 1:
        raise ValueError("iterations (or a replan) and n_models must be at least 1")
    schedule = CheckpointSchedule(checkpoint_every, checkpoint_seconds)
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}")
    fingerprint = dict(fingerprint or {})
    images = synthetic.images.detach().clone().requires_grad_(True)
    order = [name for name in LEARNABLES if name in synthetic.learned]
    learned = {name: synthetic.learned[name].detach().clone().requires_grad_(True) for name in order}
    if constraint is not None:
        constraint.project_(images)
    current = SyntheticSet(images, synthetic.labels.detach().clone(), learned, synthetic.epochs)

    def delivered() -> SyntheticSet:
        """The set the victims see: ``current`` with its images delivered under ``constraint``."""
        return current if constraint is None else current.replaced(images=constraint.deliver(images))

    # One Adam group per trained tensor, named by its checkpoint key.
    rate_of = adam_rates(lr, dict(rates or {}), order)
    names = ["images", *(LEARNABLES[name].key for name in order)]
    trained = [images, *learned.values()]
    groups = [{"params": [images], "lr": lr}] + [{"params": [learned[n]], "lr": rate_of[n]} for n in order]
    optimizer = torch.optim.Adam(groups, betas=betas)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    lr_scale, start = 1.0, 0
    plan: dict = {}

    if resume:
        state = load_checkpoint(require_checkpoint(checkpoint_path), device=images.device)
        refuse_other_settings(f"checkpoint {checkpoint_path}", state.fingerprint, fingerprint)
        stored = state.synthetic
        if set(stored.learned) != set(learned) or stored.images.shape != images.shape or any(
                stored.learned[name].shape != tensor.shape for name, tensor in learned.items()):
            raise DDSecError(f"checkpoint {checkpoint_path} holds a set of another shape; start over with --force")
        with torch.no_grad():
            images.copy_(stored.images)
            for name, tensor in learned.items():
                tensor.copy_(stored.learned[name])
        _load_adam_state(optimizer, state.adam, names)
        if dual is not None:
            dual.load_state_dict(state.dual)
        generator.set_state(state.generator_state)
        losses = state.losses.tolist()
        lr_scale, start = state.lr_scale, state.iteration
        plan = dict(state.plan)
        if plan:
            iterations, decay_every = plan["iterations"], plan["decay_every"]

    if dual is not None:
        probe = max(probe, dual.period)
    if iterations is None:  # provisional, until the plan is made after the first timed iterations
        iterations = start + probe + 2

    def planned() -> bool:
        """Whether ``iterations`` is final (no budget, or its plan is made)."""
        return replan is None or bool(plan)

    def snapshot(iteration: int) -> LoopState:
        return LoopState(current, _adam_state(optimizer, names), generator.get_state(), iteration,
                         torch.tensor(losses, dtype=torch.float32), lr_scale, fingerprint, plan,
                         {} if dual is None else dual.state_dict())

    here = world()
    if here.size > 1:
        broadcast_(trained)
        on_progress = on_progress if here.is_main else None

    def checkpoint(iteration: int) -> None:
        if checkpoint_path is not None and here.is_main:
            save_checkpoint(checkpoint_path, snapshot(iteration))
        schedule.saved()

    model = objective.model
    backoffs_in_a_row = total_backoffs = 0
    iteration = start
    timed_from: float | None = None  # the end of the first iteration of this process, for replan
    if resume and on_progress is not None:
        on_progress(Progress(start, iterations, losses[-1] if losses else float("nan"),
                             optimizer.param_groups[0]["lr"], delivered(), "resume",
                             planned()))
    try:
        while iteration < iterations:
            if dual is not None:
                if here.is_main:
                    dual.update(iteration, delivered())
                if here.size > 1:
                    shared = dual.state_dict()
                    broadcast_([shared[name] for name in sorted(shared)])
                    dual.load_state_dict(shared)
            decay = decay_factor ** (iteration // decay_every) if decay_every else 1.0
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * decay * lr_scale
            if here.size > 1:
                generator.manual_seed(iteration_seed(seed, iteration, here))
            x_real, y_real = objective.real_batch(generator)
            params = objective.init.sample(n_models, generator)
            inner, inner_plan = (inner_optimizer, None) if sample_inner is None else sample_inner(generator)
            loss, images_grad, raw_grads = meta_grads(
                model, params, delivered(), x_real, y_real, mode=mode, keep_graphs=keep_graphs, theta_every=theta_every,
                batching=batching, loss_fn=objective.outer_loss, optimizer=inner, plan=inner_plan, compile=compile,
            )
            learned_grads = [raw_grads[name] for name in order]
            if penalty is not None:
                shown = delivered()
                at = shown.images.detach().requires_grad_(True)
                extra = penalty(params, at, shown.labels.detach())
                loss, images_grad = loss + extra.detach(), images_grad + torch.autograd.grad(extra, at)[0]
            if here.size > 1:
                loss, images_grad, *learned_grads = all_reduce_mean([loss.reshape(1), images_grad, *learned_grads])
                loss = loss[0]
            if not _finite(loss, images_grad, *learned_grads):
                backoffs_in_a_row += 1
                total_backoffs += 1
                if on_nonfinite == "stop" or backoffs_in_a_row > max_backoffs:
                    checkpoint(iteration)
                    where = f"; the last good state is saved in {checkpoint_path}" if checkpoint_path else ""
                    raise NonFiniteError(
                        f"the outer loss or its gradient became NaN/inf at iteration {iteration + 1}{where};"
                        " lower --lr or --distill-lr, then resume"
                    )
                lr_scale *= 0.5
                if on_progress is not None:
                    on_progress(Progress(iteration, iterations, float(loss), optimizer.param_groups[0]["lr"], delivered(),
                                         "backoff", planned()))
                continue
            backoffs_in_a_row = 0
            for tensor, grad in zip(trained, [images_grad, *learned_grads]):
                tensor.grad = grad
            optimizer.step()
            if constraint is not None:
                constraint.project_(images)
            iteration += 1
            if replan is not None and not plan:
                if timed_from is None:
                    timed_from = time.perf_counter()
                elif iteration - start == probe + 1:
                    seconds = (time.perf_counter() - timed_from) / probe
                    chosen, every = replan(seconds)
                    if here.size > 1:  # every process follows rank 0's plan
                        shared = torch.tensor([chosen, every or 0, seconds], dtype=torch.float64)
                        broadcast_([shared])
                        chosen, every, seconds = int(shared[0]), int(shared[1]) or None, float(shared[2])
                    iterations, decay_every = max(chosen, iteration), every
                    plan = {"iterations": iterations, "decay_every": decay_every, "seconds_per_iteration": seconds}
            losses.append(float(loss))
            event = ""
            if iteration == iterations or (checkpoint_path is not None and schedule.due(iteration)):
                checkpoint(iteration)
                event = "checkpoint" if checkpoint_path is not None else ""
            if on_progress is not None:
                on_progress(Progress(iteration, iterations, float(loss), optimizer.param_groups[0]["lr"], delivered(),
                                     event, planned()))
    except (KeyboardInterrupt, PeerLostError):
        checkpoint(iteration)
        raise
    final = delivered().detached()
    return DistillResult(final, torch.tensor(losses, dtype=torch.float32), start, total_backoffs, plan)
