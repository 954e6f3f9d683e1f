"""The train-epochs evaluation protocol applied to a distilled set (``ddsec eval --protocol train-epochs``).

DC, DSA and DM (Zhao et al., arXiv 2006.05929, 2102.08259, 2110.04181) judge a synthetic set by
training fresh networks on all its images for a fixed number of epochs and testing them: DSA and
DM train them with per-image DSA augmentation, DC on MNIST with DC's own crop/scale/rotate
(``dc``); 1000 epochs with augmentation, 300 without. Any distilled set can be judged this way:
its ``[S, N, …]`` images are pooled into one training set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ddsec.condense.augment import evaluation_augment
from ddsec.condense.config import METHODS
from ddsec.data import ImageDataset
from ddsec.engine import InitDistribution
from ddsec.evaluate import EpochRecipe, EvalResult, evaluate_train_epochs

PROTOCOLS = ("steps", "train-epochs")
"""``steps``: replay the set as distilled; ``train-epochs``: the DC/DSA/DM protocol."""
DEFAULT_EPOCHS = 300


def file_method(config: dict) -> str:
    """The method that made a set, from its stored ``config`` (``dd`` for sets without one)."""
    method = config.get("method", "dd")
    return method if method in METHODS else "dd"


def default_protocol(config: dict) -> str:
    """``train-epochs`` for sets made by dc/dsa/dm, else ``steps``."""
    return "train-epochs" if file_method(config) in METHODS else "steps"


def default_augmentation(config: dict) -> str:
    """The set's own evaluation augmentation (``eval_augment``), else its DSA strategy for dsa/dm, else ``none``."""
    if config.get("eval_augment"):
        return config["eval_augment"]
    return (config.get("dsa_strategy") or "none") if file_method(config) in ("dsa", "dm") else "none"


def default_epochs(config: dict) -> int:
    """The set's own evaluation epochs (1000 with augmentation, 300 without), else 300."""
    return int(config.get("eval_epochs") or DEFAULT_EPOCHS)


def evaluate_set(
    model: nn.Module,
    init: InitDistribution,
    images: Tensor,
    labels: Tensor,
    test: ImageDataset,
    *,
    n_models: int,
    epochs: int,
    augmentation: str,
    seed: int,
    on_model: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Train ``n_models`` fresh models from ``init`` on every image of a set and test them on ``test``.

    Args:
        images: float ``[S, N, C, H, W]``; labels: int64 ``[S, N]`` or float ``[S, N, K]``.
        epochs: training epochs (SGD momentum 0.9, weight decay 5e-4, lr 0.01 ÷ 10 at half).
        augmentation: DSA strategy string, ``dc`` (DC's MNIST augmentation) or ``none``.
        seed: seeds the inits, batch orders and augmentation.
        on_model: called as ``on_model(done, n_models)`` after each model.
    """
    return evaluate_train_epochs(
        model, init, images.flatten(0, 1), labels.flatten(0, 1), test.images, test.labels, n_models=n_models,
        recipe=EpochRecipe(epochs=epochs), generator=torch.Generator().manual_seed(seed),
        augment=evaluation_augment(augmentation), on_model=on_model,
    )
