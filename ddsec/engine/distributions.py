"""Initial-weight distributions ``p(θ0)`` the outer loop samples from.

Wang et al. (arXiv 1811.10959) distil for four kinds of initial weights: a random init
re-sampled every iteration (§3.2), one fixed init (§3.1), random draws from a population of
pretrained models (§3.4–3.5, attacks and adaptation) and one fixed pretrained model. Each is an
object with ``sample(n, generator) -> population`` (``[n, …]`` tensors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor, nn

from ddsec.engine.init import init_tensors
from ddsec.engine.population import Params, population_size, select, stack_params


class InitDistribution(Protocol):
    """Something that samples populations of initial weights."""

    kind: str

    def sample(self, n: int, generator: torch.Generator) -> Params:
        """``n`` initial models as a population dict of ``[n, …]`` tensors."""
        ...


FIXED_KINDS = ("fixed", "pretrained")
"""Kinds of ``p(θ0)`` whose every draw is the same model."""


def distinct_draws(init: InitDistribution, n: int) -> int:
    """How many of ``n`` draws from ``init`` differ: 1 for fixed and pretrained inits, else ``n``."""
    return 1 if init.kind in FIXED_KINDS else n


def draw_limit(init: InitDistribution) -> int | None:
    """The most distinct models ``init`` can give: 1 for fixed and pretrained inits, a population's
    size, ``None`` (no limit) for fresh random inits."""
    if init.kind in FIXED_KINDS:
        return 1
    return getattr(init, "size", None)


class RandomInit:
    """Fresh random weights every draw (``xavier``, ``kaiming`` or ``default`` scheme).

    Args:
        model: gives parameter names, shapes, dtype and device.
        scheme: see :mod:`ddsec.engine.init`.
    """

    kind = "random"

    def __init__(self, model: nn.Module, scheme: str = "xavier") -> None:
        self.templates = {k: v.detach() for k, v in model.named_parameters()}
        self.scheme = scheme
        init_tensors(self.templates, scheme)  # validates the scheme now, not mid-run

    def sample(self, n: int, generator: torch.Generator) -> Params:
        draws = []
        for _ in range(n):
            fresh = init_tensors({k: v.cpu() for k, v in self.templates.items()}, self.scheme, generator)
            draws.append({k: v.to(self.templates[k].device) for k, v in fresh.items()})
        return stack_params(draws)


class FixedInit:
    """The same weights every draw: a fixed random init, or a fixed pretrained model.

    Args:
        params: one model's parameters (no model dimension).
        kind: ``"fixed"`` or ``"pretrained"``, recorded in exports.
    """

    def __init__(self, params: Mapping[str, Tensor], kind: str = "fixed") -> None:
        if kind not in FIXED_KINDS:
            raise ValueError(f"kind must be 'fixed' or 'pretrained', got {kind!r}")
        self.params = {k: v.detach() for k, v in params.items()}
        self.kind = kind

    def sample(self, n: int, generator: torch.Generator) -> Params:
        return {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in self.params.items()}


class PopulationInit:
    """Random draws (without replacement within one sample) from a stored population.

    Args:
        population: ``[P, …]`` tensors, e.g. pretrained models from :mod:`ddsec.models_zoo`.
    """

    kind = "population"

    def __init__(self, population: Mapping[str, Tensor]) -> None:
        self.population = {k: v.detach() for k, v in population.items()}
        self.size = population_size(self.population)

    def sample(self, n: int, generator: torch.Generator) -> Params:
        if n > self.size:
            raise ValueError(f"cannot draw {n} distinct models from a population of {self.size}")
        index = torch.randperm(self.size, generator=generator)[:n]
        return select(self.population, index.to(next(iter(self.population.values())).device))
