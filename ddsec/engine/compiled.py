"""The back-gradient pass's per-step work as compiled graphs (``torch.func`` + ``torch.compile``).

The ``hvp`` meta-gradient (:mod:`ddsec.engine.metagrad`; Wang et al., arXiv 1811.10959, appendix)
spends its time in the outer loss's gradient ``∂L/∂θ_T`` on the real batch and in two small
computations per inner step, repeated ``T`` times for every sampled model: the loss gradient
``G_t = ∇_θ ℓ_t(θ_t, x_t)`` (on the forward unroll, and again on the way back) and the
vector-Jacobian product of ``G_t`` with its adjoint ``Ḡ``, which gives the Hessian-vector product
``H_t Ḡ`` and the mixed terms for the step's inputs and soft targets. Eager autograd launches
every one of their kernels from Python. Here each of the three is one pure function of
``torch.func`` transforms (``grad`` and ``vjp`` of the population loss, ``vmap`` of
``functional_call`` over the stacked models), put through ``torch.compile(fullgraph=True,
dynamic=False)``: shapes are fixed within a run (population size, step batch), so each distinct
shape compiles once. The inner optimizer's update and its adjoint, and the way a step's batch is
built from the synthetic leaves, stay eager (cheap, and any optimizer or victim plan keeps working).

Compiled artefacts go to inductor's on-disk cache (its FX graph cache, on by default), so a second
process compiles from it in a fraction of the first's time: ``$TORCHINDUCTOR_CACHE_DIR`` when set,
else ``$XDG_CACHE_HOME/ddsec/inductor`` or ``~/.cache/ddsec/inductor``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vjp, vmap

from ddsec.engine.unroll import expand_targets, population_loss

COMPILE_CHOICES = ("auto", "on", "off")
Tensors = tuple[Tensor, ...]


def use_compile(choice: str, device: torch.device | str) -> bool:
    """Whether a run compiles the back-gradient pass: ``on``, ``off``, or ``auto`` (on for CUDA only).

    Raises:
        ValueError: ``choice`` is not one of :data:`COMPILE_CHOICES`.
    """
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {choice!r}")
    return choice == "on" or (choice == "auto" and torch.device(device).type == "cuda")


def cache_dir() -> Path:
    """Where compiled artefacts persist across runs (see the module docstring)."""
    own = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if own:
        return Path(own)
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "ddsec" / "inductor"


def _logits(model: nn.Module, names: tuple[str, ...], theta: Tensors, x: Tensor) -> Tensor:
    """Every model's logits ``[M, B, K]`` for ``θ`` (``[M, …]`` tensors named ``names``) on ``x`` ``[B, C, H, W]``."""

    def one(params: Tensors, inputs: Tensor) -> Tensor:
        return functional_call(model, dict(zip(names, params)), (inputs,))

    return vmap(one, in_dims=(0, None))(theta, x)


def _loss(model: nn.Module, names: tuple[str, ...], theta: Tensors, x: Tensor, y: Tensor) -> Tensor:
    """The population loss (:func:`~ddsec.engine.unroll.population_loss`) on the step batch ``x``
    with targets ``y``."""
    return population_loss(_logits(model, names, theta, x), y)


def _outer(model: nn.Module, names: tuple[str, ...], theta: Tensors, x: Tensor, y: Tensor,
           loss_fn: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensors]:
    """``(L, ∂L/∂θ)``: ``loss_fn`` on every model's logits for the real batch ``x``, averaged over models."""

    def outer_loss(params: Tensors) -> Tensor:
        logits = _logits(model, names, params, x)
        return loss_fn(logits.flatten(0, 1), expand_targets(y, logits.shape[0]))

    grads, loss = grad_and_value(outer_loss)(theta)
    return loss, grads


def _grads(model: nn.Module, names: tuple[str, ...], theta: Tensors, x: Tensor, y: Tensor) -> Tensors:
    """``G = ∇_θ ℓ``, shaped like ``θ``."""
    return grad(_loss, argnums=2)(model, names, theta, x, y)


def _back(model: nn.Module, names: tuple[str, ...], theta: Tensors, x: Tensor, y: Tensor,
          cotangent: Tensors) -> tuple[Tensors, Tensor, Tensor | None]:
    """``(H Ḡ, (∂G/∂x)ᵀ Ḡ, (∂G/∂y)ᵀ Ḡ or None for class-index targets)`` for ``Ḡ = cotangent``."""
    if y.is_floating_point():
        _, pullback = vjp(lambda p, inputs, targets: _grads(model, names, p, inputs, targets), theta, x, y)
        return pullback(cotangent)
    _, pullback = vjp(lambda p, inputs: _grads(model, names, p, inputs, y), theta, x)
    hvp, x_bar = pullback(cotangent)
    return hvp, x_bar, None


class CompiledStep:
    """The compiled ``G_t`` and back-gradient VJP of one inner step for populations of ``model``.

    Args:
        model: used only through ``functional_call`` with ``vmap`` over the models (its buffers
            are read, its parameters ignored); no active dropout, no running statistics.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.failure: str | None = None  # why compiling failed once for this model; then eager
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir()))
        self._grads = torch.compile(_grads, fullgraph=True, dynamic=False)
        self._back = torch.compile(_back, fullgraph=True, dynamic=False)
        self._outer = torch.compile(_outer, fullgraph=True, dynamic=False)

    def outer(self, names: tuple[str, ...], theta: Tensors, x: Tensor, y: Tensor,
              loss_fn: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensors]:
        """``(L, ∂L/∂θ_T)``: the outer loss (a scalar, averaged over models) at ``θ_T`` (``[M, …]``
        tensors) on the real batch ``x`` ``[B, C, H, W]`` with targets ``y``, and its gradient."""
        return self._outer(self.model, names, theta, x, y, loss_fn)

    def grads(self, names: tuple[str, ...], theta: Tensors, x: Tensor, y: Tensor) -> Tensors:
        """``G_t`` for every model.

        Args:
            names: the parameter names, in the order of ``theta``.
            theta: ``θ_t``, ``[M, …]`` tensors (not requiring grad).
            x: the step batch ``[B, C, H, W]``.
            y: int64 ``[B]`` class indices or float ``[B, K]`` soft targets.

        Returns:
            ``G_t``, shaped like ``theta``.
        """
        return self._grads(self.model, names, theta, x, y)

    def back(self, names: tuple[str, ...], theta: Tensors, x: Tensor, y: Tensor,
             cotangent: Tensors) -> tuple[Tensors, Tensor, Tensor | None]:
        """The VJP of ``G_t`` with its adjoint ``Ḡ = cotangent`` (shaped like ``theta``; the rest as
        :meth:`grads`): ``(H_t Ḡ`` shaped like ``theta``, the mixed term for ``x`` ``[B, C, H, W]``,
        for float targets the mixed term ``[B, K]`` for ``y``, else ``None)``."""
        return self._back(self.model, names, theta, x, y, cotangent)


_STEPS: weakref.WeakKeyDictionary[nn.Module, CompiledStep] = weakref.WeakKeyDictionary()


def compiled_step(model: nn.Module) -> CompiledStep:
    """``model``'s :class:`CompiledStep`, made once, so a compile failure is remembered for it."""
    if model not in _STEPS:
        _STEPS[model] = CompiledStep(model)
    return _STEPS[model]
