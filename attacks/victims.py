"""Victims as values: how a model that meets a poisoning batch actually trains on it.

Wang et al. (arXiv 1811.10959), §3.4 assume the victim takes exactly the attacker's step: one plain
SGD step on the poisoning batch alone, with the learned step size. A :class:`Victim` states every
way a real victim may differ (in the spirit of the victim settings of MetaPoison, Huang et al.,
NeurIPS 2020, and Witches' Brew, Geiping et al., ICLR 2021): its optimizer (SGD with momentum,
Adam), step size (the learned one scaled, or its own), weight decay, the clean training images
the batch is mixed into, random shifts, how many steps it takes on the batch, clean steps before
(warm optimizer state) and after (does the effect persist?), and which models it is.

:data:`STANDARD_VICTIMS` varies one of these at a time from the paper's victim; ``ddsec stress``
replays a poisoning batch under each (:mod:`ddsec.attacks.stress`). A victim parses from a short
spec, e.g. ``"sgd lr=x0.5 mix=32"`` or ``"adam lr=0.001 steps=10"``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ddsec.data import ImageDataset
from ddsec.engine import SGD, Adam, InnerOptimizer, InnerStep
from ddsec.errors import DDSecError

OPTIMIZERS = ("sgd", "adam")
PLACEMENTS = ("every", "first")


@dataclass(frozen=True)
class Victim:
    """One victim's training on a poisoning batch.

    Attributes:
        name: shown in tables.
        optimizer: ``sgd`` or ``adam``.
        momentum: SGD momentum (starting from zero velocity, or from the warm-up's).
        weight_decay: L2 coefficient of the victim's optimizer.
        lr: the victim's own fixed step size; ``None`` uses the batch's learned step sizes.
        lr_scale: multiplies the learned step sizes (with ``lr=None``).
        mix: clean training images added to every poisoned step's batch (the loss is the mean
            over the union); 0: the batch alone.
        steps: poisoned steps ``K`` (``None``: the batch's own ``T``); step ``k`` uses the batch's
            step ``k mod S`` and step size ``k mod T``.
        placement: ``every`` (the batch in each of the ``K`` steps) or ``first`` (in the first
            only; the other ``K − 1`` steps are clean).
        augment: random shifts of up to ``augment`` pixels (zero padding) of every image the
            victim trains on.
        warmup: clean steps before the batch (warm momentum or Adam moments).
        after: clean steps after the batch (does the effect persist?).
        clean_lr: step size of the clean steps (warm-up, after, and ``placement=first``).
        clean_batch: clean images per clean step.
    """

    name: str
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr: float | None = None
    lr_scale: float = 1.0
    mix: int = 0
    steps: int | None = None
    placement: str = "every"
    augment: int = 0
    warmup: int = 0
    after: int = 0
    clean_lr: float = 0.01
    clean_batch: int = 32

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise DDSecError(f"victim {self.name!r}: optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.placement not in PLACEMENTS:
            raise DDSecError(f"victim {self.name!r}: placement must be every or first, got {self.placement!r}")
        counts = {"mix": self.mix, "augment": self.augment, "warmup": self.warmup, "after": self.after}
        for key, value in counts.items():
            if value < 0:
                raise DDSecError(f"victim {self.name!r}: {key} must not be negative, got {value}")
        positive = {"lr_scale": self.lr_scale, "clean_lr": self.clean_lr, "clean_batch": self.clean_batch,
                    "steps": 1 if self.steps is None else self.steps, "lr": 1 if self.lr is None else self.lr}
        for key, value in positive.items():
            if not value > 0:
                raise DDSecError(f"victim {self.name!r}: {key} must be positive, got {value}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise DDSecError(f"victim {self.name!r}: momentum must lie in [0, 1) and weight decay be >= 0")
        if self.optimizer == "adam" and self.momentum:
            raise DDSecError(f"victim {self.name!r}: momentum is an SGD setting; Adam uses its own moments")

    def inner_optimizer(self) -> InnerOptimizer:
        """The victim's update rule as an engine optimizer value."""
        if self.optimizer == "adam":
            return Adam(weight_decay=self.weight_decay)
        return SGD(momentum=self.momentum, weight_decay=self.weight_decay)

    def plan(self, shape: tuple[int, int, int], clean: ImageDataset, generator: torch.Generator,
             device: torch.device | str = "cpu") -> list[InnerStep]:
        """The victim's inner steps on a batch of ``shape = (S, N, T)`` (step batches, images per
        step, learned step sizes), with every clean draw and shift made now from ``generator``:
        warm-up, the ``K`` poisoned (or first-poisoned) steps, then the clean steps after.
        Crafting (the meta-gradient) and evaluation (the unroll) replay the same plan."""
        steps, per_step, total = shape

        def shifts(count: int) -> dict:
            if not self.augment:
                return {}
            return {"offsets": torch.randint(0, 2 * self.augment + 1, (count, 2), generator=generator),
                    "pad": self.augment}

        def clean_images(count: int) -> dict:
            if not count:
                return {}
            pick = torch.randperm(len(clean), generator=generator)[:count]
            return {"clean_images": clean.images[pick].to(device), "clean_labels": clean.labels[pick].to(device)}

        def clean_step() -> InnerStep:
            batch = clean_images(self.clean_batch)
            return InnerStep(None, lr=self.clean_lr, **batch, **shifts(len(batch["clean_labels"])))

        plan = [clean_step() for _ in range(self.warmup)]
        for k in range(self.steps or total):
            if self.placement == "first" and k > 0:
                plan.append(clean_step())
                continue
            rate = {"lr": self.lr} if self.lr is not None else {"lr_index": k % total, "lr_scale": self.lr_scale}
            batch = clean_images(self.mix)
            plan.append(InnerStep(k % steps, **rate, **batch, **shifts(per_step + len(batch.get("clean_labels", ())))))
        return plan + [clean_step() for _ in range(self.after)]


_KEYS = {"lr", "momentum", "wd", "mix", "steps", "placement", "augment", "warmup", "after", "clean-lr",
         "clean-batch", "name"}


def parse_victim(spec: str) -> Victim:
    """A victim from ``"[sgd|adam] key=value …"``.

    Keys: ``lr`` (``x0.5`` scales the learned step sizes, ``0.01`` is the victim's own),
    ``momentum``, ``wd``, ``mix``, ``steps``, ``placement`` (every|first), ``augment`` (pixels),
    ``warmup``, ``after``, ``clean-lr``, ``clean-batch``, ``name``.

    Raises:
        DDSecError: an unknown key, a malformed value or an invalid setting (one line).
    """
    tokens = spec.split()
    if not tokens:
        raise DDSecError("empty victim spec; write e.g. 'sgd lr=x0.5 mix=32'")
    settings: dict = {"name": spec.strip()}
    if tokens[0] in OPTIMIZERS:
        settings["optimizer"] = tokens.pop(0)
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or key not in _KEYS or not value:
            raise DDSecError(f"victim spec {spec!r}: cannot read {token!r}; use key=value with keys"
                             f" {', '.join(sorted(_KEYS))}, after an optional sgd|adam")
        try:
            if key == "lr":
                settings.update({"lr_scale": float(value[1:])} if value.startswith("x") else {"lr": float(value)})
            elif key in ("momentum", "wd", "clean-lr"):
                settings[{"wd": "weight_decay", "clean-lr": "clean_lr"}.get(key, key)] = float(value)
            elif key in ("placement", "name"):
                settings[key] = value
            else:
                settings[key.replace("-", "_")] = int(value)
        except ValueError:
            raise DDSecError(f"victim spec {spec!r}: {key}={value} is not a number") from None
    return Victim(**settings)


def victim_spec(victim: Victim) -> dict:
    """The victim's settings as plain JSON values."""
    return {f.name: getattr(victim, f.name) for f in fields(victim)}


PAPER_VICTIM = Victim("paper")
"""The victim of Wang et al., §3.4: one plain SGD step on the batch alone, with its learned step size."""

STANDARD_VICTIMS = (PAPER_VICTIM, *(parse_victim(spec) for spec in (
    "sgd lr=x0.5 name=step-size-x0.5",
    "sgd lr=x2 name=step-size-x2",
    "sgd lr=0.01 steps=10 name=own-lr-0.01-x10-steps",
    "sgd mix=32 name=mixed-into-32-clean",
    "sgd mix=128 name=mixed-into-128-clean",
    "sgd momentum=0.9 warmup=10 name=momentum-0.9-warm",
    "adam lr=0.001 steps=10 name=adam-1e-3-x10-steps",
    "sgd wd=5e-4 name=weight-decay-5e-4",
    "sgd augment=2 name=random-shift-2px",
    "sgd after=10 name=then-10-clean-steps",
)))
"""The paper's victim, then one change at a time (names say which)."""
