"""Dataset Condensation with gradient matching (DC), with or without DSA.

Zhao, Mopuri and Bilen, "Dataset Condensation with Gradient Matching" (arXiv 2006.05929),
Algorithm 1: every outer iteration samples a fresh randomly initialised network; then
``outer_loop`` times, for every class ``c``, the gradient of the loss on a real batch of ``c``
and on the synthetic images of ``c`` are compared with :func:`~ddsec.condense.matching.gradient_distance`
and the summed distance takes one SGD step on the synthetic images; between those steps the
network is trained ``inner_loop`` epochs on the (detached) synthetic set with plain SGD.
Published loop counts by images per class are in :data:`LOOPS`.

With a DSA strategy (Zhao and Bilen, arXiv 2102.08259) the real and the synthetic batch of a
class go through the same random augmentation (one seed), and the network's inner training
uses per-image augmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ddsec.condense.augment import dsa_augment
from ddsec.condense.loop import ImageState, MatchingStep
from ddsec.condense.matching import gradient_distance
from ddsec.condense.problem import Matching
from ddsec.engine import select
from ddsec.evaluate import EpochRecipe, train_on

LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
"""Images per class → ``(outer_loop, inner_loop)`` of the reference implementation."""


def default_loops(ipc: int) -> tuple[int, int]:
    """The published ``(outer_loop, inner_loop)`` for ``ipc``, else the nearest smaller published one."""
    return LOOPS[max(k for k in LOOPS if k <= ipc)]


def class_gradients(model: nn.Module, params: dict[str, Tensor], images: Tensor, label: int,
                    *, create_graph: bool) -> tuple[Tensor, ...]:
    """Gradient of the cross-entropy of ``images [B, C, H, W]``, all labelled ``label``, w.r.t. ``params``."""
    targets = torch.full((images.shape[0],), label, dtype=torch.int64, device=images.device)
    loss = F.cross_entropy(functional_call(model, params, (images,)), targets)
    return torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)


def gradient_matching_step(matching: Matching, *, outer_loop: int, net_recipe: EpochRecipe) -> MatchingStep:
    """One DC (or, with ``matching.strategy``, DSA) outer iteration as a :data:`~ddsec.condense.loop.MatchingStep`.

    Args:
        matching: network, init, real batches, image optimizer, layout and DSA strategy.
        outer_loop: image updates per iteration.
        net_recipe: the network's training between two image updates (``inner_loop`` epochs of
            plain SGD with lr 0.01 and batches of 256 in the paper), with per-image DSA when a
            strategy is set.
    """
    m = matching
    labels = torch.arange(m.num_classes).repeat_interleave(m.ipc)
    augment = dsa_augment(m.strategy)

    def step(state: ImageState, generator: torch.Generator, iteration: int) -> tuple[ImageState, float]:
        params = {k: v.requires_grad_(True) for k, v in select(m.init.sample(1, generator), 0).items()}
        losses = []
        for outer in range(outer_loop):
            images = state.images.detach().requires_grad_(True)
            loss = images.new_zeros(())
            for c in range(m.num_classes):
                real, syn = m.pair(images, c, generator, iteration)
                g_real = class_gradients(m.model, params, real, c, create_graph=False)
                g_syn = class_gradients(m.model, params, syn, c, create_graph=True)
                loss = loss + gradient_distance(g_real, g_syn)
            (grad,) = torch.autograd.grad(loss, images)
            state = m.optimizer(state, grad)
            losses.append(float(loss.detach()) / m.num_classes)
            if outer < outer_loop - 1:
                trained = train_on(m.model, params, state.images, labels.to(state.images.device), net_recipe,
                                   generator=generator, augment=augment)
                params = {k: v.requires_grad_(True) for k, v in trained.items()}
        return state, sum(losses) / len(losses)

    return step
