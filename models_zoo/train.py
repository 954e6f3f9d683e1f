"""Training populations of classifiers, many models per call.

The attack and adaptation experiments of Wang et al. (arXiv 1811.10959, §3.4–3.5) start from
populations of independently pretrained networks. :func:`train_group` trains ``G`` models at
once: their parameters are stacked ``[G, …]``, each model sees its own batches (its own data
order) and the summed loss gives every model its own gradient, so one Adam optimizer over the
stacked tensors is exactly ``G`` independent Adam optimizers. Each model's seed fixes both its
initial weights and its data order, so a population is reproducible model by model and
populations with disjoint seeds share neither.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsec.data import ImageDataset
from ddsec.engine import init_module_, population_forward, stack_params
from ddsec.engine.population import Params
from ddsec.errors import DDSecError, NonFiniteError

_DATA_STREAM = 0x5EED_DA7A  # offsets a model's seed for its data-order generator


@dataclass(frozen=True)
class TrainRecipe:
    """How each model of a population is trained: Adam with a cosine-decayed learning rate.

    Attributes:
        steps: optimizer steps per model; ``None`` until :meth:`for_dataset` fills in
            :func:`default_steps`.
        batch_size: images per step (each model draws its own, epoch by epoch without replacement).
        lr: peak Adam learning rate.
        weight_decay: L2 penalty.
        init: initial-weight scheme (see :mod:`ddsec.engine.init`).
    """

    steps: int | None = None
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    init: str = "default"

    def __post_init__(self) -> None:
        for flag, value in (("--steps", self.steps), ("--batch-size", self.batch_size)):
            if value is not None and value < 1:
                raise DDSecError(f"{flag} must be at least 1, got {value}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise DDSecError(f"--lr must be positive and --weight-decay not negative, got {self.lr}, {self.weight_decay}")

    def for_dataset(self, train_size: int) -> TrainRecipe:
        """This recipe with ``steps`` set (to :func:`default_steps` if it was ``None``)."""
        return self if self.steps is not None else replace(self, steps=default_steps(train_size, self.batch_size))

    def as_dict(self) -> dict:
        """The recipe as plain JSON-able values (stored in population metadata)."""
        return {"optimizer": "adam", "schedule": "cosine", **asdict(self)}


def default_steps(train_size: int, batch_size: int, *, max_steps: int = 300, epochs: int = 10) -> int:
    """``min(max_steps, epochs over the training set)``: small sets (digits) need far fewer steps."""
    return max(1, min(max_steps, math.ceil(epochs * train_size / batch_size)))


class _DataOrder:
    """One model's endless stream of batch indices, epoch by epoch without replacement."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size = size, min(batch_size, size)
        self.generator = torch.Generator().manual_seed(seed + _DATA_STREAM)
        self.order, self.position = torch.randperm(size, generator=self.generator), 0

    def next(self) -> Tensor:
        if self.position + self.batch_size > self.size:
            self.order, self.position = torch.randperm(self.size, generator=self.generator), 0
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return index


def initial_params(model: nn.Module, seeds: Sequence[int], scheme: str) -> Params:
    """The seeded initial weights of ``len(seeds)`` models: ``[G, …]`` tensors on ``model``'s device."""
    device = next(model.parameters()).device
    template = copy.deepcopy(model).cpu()  # seeded CPU generators, so CPU and GPU runs draw the same weights
    draws = []
    for seed in seeds:
        init_module_(template, scheme, torch.Generator().manual_seed(int(seed)))
        draws.append({k: v.detach().clone() for k, v in template.named_parameters()})
    return {k: v.to(device) for k, v in stack_params(draws).items()}


def pick_batching(batching: str, device: torch.device) -> str:
    """``auto``: vmap on GPUs; a loop on CPU, where vmap's grouped kernels measured slower for LeNet."""
    if batching == "auto":
        return "vmap" if device.type == "cuda" else "loop"
    return batching


def train_group(
    model: nn.Module,
    train: ImageDataset,
    seeds: Sequence[int],
    recipe: TrainRecipe,
    *,
    batching: str = "auto",
    on_step: Callable[[int], None] | None = None,
    start: Params | None = None,
) -> Params:
    """Train ``G = len(seeds)`` models together from their seeded inits (or from ``start``).

    Args:
        model: the architecture (its parameters are overwritten; its device is used).
        train: training images ``[N, C, H, W]`` and labels ``[N]``.
        seeds: one seed per model, fixing its init and its data order.
        recipe: optimizer settings.
        batching: ``auto``, ``vmap`` or ``loop`` over the ``G`` models.
        on_step: called with the step number after every optimizer step.
        start: ``[G, …]`` weights to start from instead of the seeded inits (fine-tuning);
            the seeds then fix only the data order.

    Returns:
        The trained parameters, ``[G, …]`` tensors (detached).

    Raises:
        NonFiniteError: the loss became NaN or infinite.
    """
    if recipe.steps is None:
        raise ValueError("recipe.steps is None; use recipe.for_dataset(len(train))")
    device = next(model.parameters()).device
    first = initial_params(model, seeds, recipe.init) if start is None else start
    params = {k: v.detach().clone().requires_grad_() for k, v in first.items()}
    forward = population_forward(model, pick_batching(batching, device), shared_input=False)
    optimizer = torch.optim.Adam(params.values(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    orders = [_DataOrder(len(train), recipe.batch_size, int(s)) for s in seeds]
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
        index = torch.stack([order.next() for order in orders])  # [G, B]
        x, y = train.images[index].to(device), train.labels[index].to(device)
        logits = forward(params, x)  # [G, B, K]
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / y.shape[1]
        if not torch.isfinite(loss):
            raise NonFiniteError(f"population training diverged at step {step + 1} (loss {float(loss)}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1)
    return {k: v.detach() for k, v in params.items()}


@torch.no_grad()
def population_accuracy(model: nn.Module, params: Params, test: ImageDataset, *, batch_size: int = 2000) -> Tensor:
    """Test accuracy of every model of a population: float ``[G]`` fractions."""
    device = next(iter(params.values())).device
    forward = population_forward(model, "loop")
    correct = torch.zeros(next(iter(params.values())).shape[0])
    for start in range(0, len(test), batch_size):
        x = test.images[start : start + batch_size].to(device)
        y = test.labels[start : start + batch_size]
        correct += (forward(params, x).argmax(-1).cpu() == y).sum(1)
    return correct / len(test)
