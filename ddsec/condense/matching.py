"""The two matching losses: gradient distance (DC, DSA) and mean-embedding distance (DM).

Zhao, Mopuri and Bilen, "Dataset Condensation with Gradient Matching" (arXiv 2006.05929), Eq. 9:
the distance between the gradients of the real and the synthetic loss is a sum over layers and,
within a layer, over output units ``i`` of ``1 − cos(A_i, B_i)``, where ``A_i`` is the gradient
of the weights feeding unit ``i`` (a row of a linear layer's weight, a flattened ``in×k×k``
filter of a convolution). Bias and normalisation parameters (1-d) are left out, as in the paper.

Zhao and Bilen, "Dataset Condensation with Distribution Matching" (arXiv 2110.04181), Eq. 4:
the squared distance between the mean embeddings of the real and the synthetic batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_EPS = 1e-12


def gradient_distance(real: Sequence[Tensor], synthetic: Sequence[Tensor]) -> Tensor:
    """``Σ_layers Σ_i (1 − cos(real_i, synthetic_i))`` over output units ``i``.

    Args:
        real: per-parameter gradients (e.g. ``[out, in, k, k]``, ``[out, in]``, ``[out]``).
        synthetic: the same shapes, in the same order.

    Returns:
        A scalar; zero when the gradients point the same way unit by unit.
    """
    total = torch.zeros((), dtype=synthetic[0].dtype, device=synthetic[0].device)
    for g_real, g_syn in zip(real, synthetic, strict=True):
        if g_syn.dim() < 2:
            continue
        a, b = g_real.flatten(1), g_syn.flatten(1)  # [out, fan-in]
        cosine = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(_EPS)
        total = total + (1 - cosine).sum()
    return total


def embedding_distance(real: Tensor, synthetic: Tensor) -> Tensor:
    """``‖mean(real) − mean(synthetic)‖²`` for embeddings ``real [B, D]`` and ``synthetic [N, D]``: a scalar."""
    return (real.mean(0) - synthetic.mean(0)).pow(2).sum()
