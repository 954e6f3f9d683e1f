"""What a defender's model says about each training sample: features, losses, per-sample gradients.

One :class:`ModelProbe` wraps one model (a parameter dict for the architecture) and a labelled
set of ``N`` samples; every quantity is computed once, in chunks, and cached, so several
detectors share the work. Per-sample gradients come from ``torch.func.vmap(grad(…))``; their
norms and their cosine with the mean gradient direction of the sample's class are reduced chunk by
chunk, never held as an ``[N, |θ|]`` matrix.
"""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ddsec.features import PENULTIMATE, feature_module

class ModelProbe:
    """One model's view of ``N`` labelled samples.

    Args:
        model: the architecture (eval mode); its own parameters are not used.
        params: one model's parameters (unstacked), on the samples' device.
        images: float ``[N, C, H, W]`` normalised samples; labels: int64 ``[N]`` their given labels.
        layer: where features are read (see :func:`ddsec.features.feature_module`); a 4-d output is flattened.
        chunk: samples per batched call.
    """

    def __init__(self, model: nn.Module, params: dict[str, Tensor], images: Tensor, labels: Tensor, *,
                 layer: str = PENULTIMATE, chunk: int = 512) -> None:
        self.model, self.params, self.images, self.labels = model, params, images, labels
        self.layer, self.chunk = layer, chunk
        self.num_classes = int(self._forward(images[:1]).shape[-1])

    def _forward(self, x: Tensor) -> Tensor:
        return functional_call(self.model, self.params, (x,))

    def _chunks(self):
        for start in range(0, self.images.shape[0], self.chunk):
            yield self.images[start:start + self.chunk], self.labels[start:start + self.chunk]

    @cached_property
    def features(self) -> Tensor:
        """float ``[N, D]`` activations at ``layer``, flattened."""
        module, as_input = feature_module(self.model, self.layer, flag="--layer")
        captured: list[Tensor] = []

        def keep(_module, inputs, output=None) -> None:
            captured.append((inputs[0] if as_input else output).detach().flatten(1))

        hook = module.register_forward_pre_hook(keep) if as_input else module.register_forward_hook(keep)
        out = []
        try:
            with torch.no_grad():
                for x, _ in self._chunks():
                    captured.clear()
                    self._forward(x)
                    out.append(captured[-1])
        finally:
            hook.remove()
        return torch.cat(out)

    @cached_property
    def losses(self) -> Tensor:
        """float ``[N]`` cross-entropy of each sample against its given label."""
        with torch.no_grad():
            return torch.cat([F.cross_entropy(self._forward(x), y, reduction="none") for x, y in self._chunks()])

    def _sample_loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(self.model, params, (x.unsqueeze(0),)), y.unsqueeze(0))

    def _per_sample_gradients(self):
        """Flattened per-sample gradients ``[B, |θ|]`` chunk by chunk, with the chunk's labels."""
        per_sample = vmap(grad(self._sample_loss), in_dims=(None, 0, 0))
        for x, y in self._chunks():
            grads = per_sample(self.params, x, y)
            yield torch.cat([g.flatten(1) for g in grads.values()], dim=1), y

    @cached_property
    def _gradient_stats(self) -> tuple[Tensor, Tensor]:
        # The class direction is the mean of unit gradients: a few poisons with outsized gradients
        # would dominate the plain mean gradient and align with it.
        norms, directions = [], None
        for flat, y in self._per_sample_gradients():
            norm = flat.norm(dim=1)
            norms.append(norm)
            unit = flat / norm.clamp_min(1e-30).unsqueeze(1)
            if directions is None:
                directions = torch.zeros(self.num_classes, flat.shape[1], dtype=flat.dtype, device=flat.device)
            directions.index_add_(0, y, unit)
        cosines = [F.cosine_similarity(flat, directions[y], dim=1) for flat, y in self._per_sample_gradients()]
        return torch.cat(norms), torch.cat(cosines)

    @property
    def gradient_norms(self) -> Tensor:
        """float ``[N]`` ‖∇_θ ℓ(x_i, y_i)‖ of every sample."""
        return self._gradient_stats[0]

    @property
    def gradient_cosines(self) -> Tensor:
        """float ``[N]`` cosine between each sample's gradient and its class's mean gradient direction
        (the mean of the class's unit gradients)."""
        return self._gradient_stats[1]
