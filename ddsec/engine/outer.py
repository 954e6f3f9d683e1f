"""The outer loop: Adam on synthetic images and step sizes, over sampled initial weights.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), Algorithm 1: each iteration samples a
batch of real data and ``n`` initial weights ``θ0 ~ p(θ0)``, unrolls the inner steps from each,
and takes one Adam step (betas 0.5, 0.999) on the synthetic images and raw step sizes with the
meta-gradient averaged over the sampled models. The learning rate decays in steps.

This module is DD's :class:`~ddsec.engine.loop.Method`; :func:`ddsec.engine.loop.run_loop`, the
loop every distiller shares, times, checkpoints and resumes it. A non-finite loss or gradient
either stops the run with a clear error, the last good state saved, or backs off (skips the
update and halves the learning rate, at most ``max_backoffs`` times in a row). A constrained
objective brings a dual player (:class:`Dual`, e.g. a Lagrange multiplier): it updates before
every iteration and is checkpointed with the rest.

Under ``torchrun`` (see :mod:`ddsec.engine.distributed`) each process samples its own models and
batches, from a generator seeded per ``(iteration, rank)``; the loss and meta-gradients are
averaged over processes before the update, so ``n_models`` is per process and the run equals
one process sampling the union. Rank 0 alone writes checkpoints and gets progress callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from ddsec.engine.checkpoint import DEFAULT_CHECKPOINT_SECONDS
from ddsec.engine.distributed import all_reduce_mean, broadcast_, iteration_seed, world
from ddsec.engine.inner import SGD, InnerOptimizer
from ddsec.engine.learned import LEARNABLES, adam_rates
from ddsec.engine.loop import StepOutcome, Tick, run_loop
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


def _finite(*tensors: Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class MetaGradientAdam:
    """DD's outer iteration, a :class:`~ddsec.engine.loop.Method`: sample initial weights and a real
    batch, take the meta-gradient of the outer loss through the unroll, one Adam step on the images
    and the learned settings (see :func:`distill` for the arguments).

    Its state: ``images`` ``[S, N, C, H, W]``, each learned setting under its key
    (``raw_lrs`` …), Adam's moments as ``adam.<group>.<key>``, the dual player's as ``dual.<name>``,
    and ``lr_scale`` (float64 scalar, what back-offs left of the learning rate).
    """

    def __init__(self, objective: Objective, synthetic: SyntheticSet, *, n_models: int, lr: float,
                 rates: Mapping[str, float | None], betas: tuple[float, float], decay_every: int | None,
                 decay_factor: float, meta: dict, inner_optimizer: InnerOptimizer, constraint: ImageConstraint | None,
                 sample_inner: Callable[[torch.Generator], tuple[InnerOptimizer, list[InnerStep]]] | None,
                 dual: Dual | None, penalty: Callable[[Params, Tensor, Tensor], Tensor] | None, seed: int,
                 on_nonfinite: str, max_backoffs: int) -> None:
        self.objective, self.n_models, self.meta, self.seed = objective, n_models, meta, seed
        self.inner_optimizer, self.constraint, self.sample_inner = inner_optimizer, constraint, sample_inner
        self.dual, self.penalty, self.on_nonfinite, self.max_backoffs = dual, penalty, on_nonfinite, max_backoffs
        self.decay_every, self.decay_factor = decay_every, decay_factor
        images = synthetic.images.detach().clone().requires_grad_(True)
        self.order = [name for name in LEARNABLES if name in synthetic.learned]
        learned = {name: synthetic.learned[name].detach().clone().requires_grad_(True) for name in self.order}
        if constraint is not None:
            constraint.project_(images)
        self.current = SyntheticSet(images, synthetic.labels.detach().clone(), learned, synthetic.epochs)
        # One Adam group per trained tensor, named by its checkpoint key.
        rate_of = adam_rates(lr, dict(rates), self.order)
        self.names = ["images", *(LEARNABLES[name].key for name in self.order)]
        self.trained = [images, *learned.values()]
        groups = [{"params": [images], "lr": lr}] + [{"params": [learned[n]], "lr": rate_of[n]} for n in self.order]
        self.optimizer = torch.optim.Adam(groups, betas=betas)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.lr_scale = 1.0
        self.backoffs_in_a_row = 0
        if world().size > 1:
            broadcast_(self.trained)

    def delivered(self) -> SyntheticSet:
        """The set the victims see: the current one with its images delivered under the constraint."""
        current = self.current
        return current if self.constraint is None else current.replaced(images=self.constraint.deliver(current.images))

    def step(self, iteration: int, generator: torch.Generator) -> StepOutcome:
        here = world()
        if self.dual is not None:
            if here.is_main:
                self.dual.update(iteration, self.delivered())
            if here.size > 1:
                shared = self.dual.state_dict()
                broadcast_([shared[name] for name in sorted(shared)])
                self.dual.load_state_dict(shared)
        decay = self.decay_factor ** (iteration // self.decay_every) if self.decay_every else 1.0
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * decay * self.lr_scale
        if here.size > 1:
            generator.manual_seed(iteration_seed(self.seed, iteration, here))
        objective = self.objective
        x_real, y_real = objective.real_batch(generator)
        params = objective.init.sample(self.n_models, generator)
        inner, plan = (self.inner_optimizer, None) if self.sample_inner is None else self.sample_inner(generator)
        loss, images_grad, raw_grads = meta_grads(objective.model, params, self.delivered(), x_real, y_real,
                                                  loss_fn=objective.outer_loss, optimizer=inner, plan=plan, **self.meta)
        learned_grads = [raw_grads[name] for name in self.order]
        if self.penalty is not None:
            shown = self.delivered()
            at = shown.images.detach().requires_grad_(True)
            extra = self.penalty(params, at, shown.labels.detach())
            loss, images_grad = loss + extra.detach(), images_grad + torch.autograd.grad(extra, at)[0]
        if here.size > 1:
            loss, images_grad, *learned_grads = all_reduce_mean([loss.reshape(1), images_grad, *learned_grads])
            loss = loss[0]
        if not _finite(loss, images_grad, *learned_grads):
            self.backoffs_in_a_row += 1
            if self.on_nonfinite == "stop" or self.backoffs_in_a_row > self.max_backoffs:
                raise NonFiniteError("the outer loss or its gradient became NaN/inf at iteration {iteration}{where};"
                                     " lower --lr or --distill-lr and start over with --force")
            self.lr_scale *= 0.5
            return StepOutcome(float(loss), skipped=True)
        self.backoffs_in_a_row = 0
        for tensor, grad in zip(self.trained, [images_grad, *learned_grads]):
            tensor.grad = grad
        self.optimizer.step()
        if self.constraint is not None:
            self.constraint.project_(self.current.images)
        return StepOutcome(float(loss))

    def state_dict(self) -> dict[str, Tensor]:
        current = self.current
        adam = {}
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                adam[f"adam.{self.names[index]}.{key}"] = torch.as_tensor(value)
        dual = {} if self.dual is None else {f"dual.{k}": v for k, v in self.dual.state_dict().items()}
        return {"images": current.images,
                **{LEARNABLES[name].key: current.learned[name] for name in self.order}, **adam, **dual,
                "lr_scale": torch.tensor(self.lr_scale, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        current = self.current
        mine = {"images": current.images, **{LEARNABLES[name].key: current.learned[name] for name in self.order}}
        others = [spec.key for spec in LEARNABLES.values() if spec.name not in self.order]
        if any(key not in state or state[key].shape != tensor.shape for key, tensor in mine.items()) or any(
                key in state for key in others):
            raise DDSecError("it holds a set of another shape; start over with --force")
        with torch.no_grad():
            for key, tensor in mine.items():
                tensor.copy_(state[key])
        optimizer_state = self.optimizer.state_dict()
        optimizer_state["state"] = {
            index: {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"adam.{name}.")}
            for index, name in enumerate(self.names) if any(k.startswith(f"adam.{name}.") for k in state)
        }
        self.optimizer.load_state_dict(optimizer_state)
        if self.dual is not None:
            self.dual.load_state_dict({k.removeprefix("dual."): v for k, v in state.items() if k.startswith("dual.")})
        self.lr_scale = float(state["lr_scale"])

    def use_plan(self, plan: dict) -> None:
        self.decay_every = plan["decay_every"]


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
        checkpoint_path, checkpoint_every, checkpoint_seconds, resume, fingerprint: see
            :func:`ddsec.engine.loop.run_loop`.
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
    if n_models < 1:
        raise ValueError("n_models must be at least 1")
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}")
    meta = dict(mode=mode, keep_graphs=keep_graphs, theta_every=theta_every, batching=batching, compile=compile)
    method = MetaGradientAdam(
        objective, synthetic, n_models=n_models, lr=lr, rates=rates or {}, betas=betas, decay_every=decay_every,
        decay_factor=decay_factor, meta=meta, inner_optimizer=inner_optimizer, constraint=constraint,
        sample_inner=sample_inner, dual=dual, penalty=penalty, seed=seed, on_nonfinite=on_nonfinite,
        max_backoffs=max_backoffs,
    )

    def report(tick: Tick) -> None:
        on_progress(Progress(tick.iteration, tick.iterations, tick.loss, method.optimizer.param_groups[0]["lr"],
                             method.delivered(), tick.event, tick.planned))

    loop = run_loop(method, iterations=iterations, seed=seed, fingerprint=dict(fingerprint or {}),
                    device=synthetic.images.device, replan=replan,
                    probe=probe if dual is None else max(probe, dual.period), checkpoint_path=checkpoint_path,
                    checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds, resume=resume,
                    on_progress=None if on_progress is None else report)
    return DistillResult(method.delivered().detached(), loop.losses, loop.resumed_from, loop.skipped, loop.plan)
