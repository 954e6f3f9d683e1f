"""Which ``θ_t`` the back-gradient pass keeps: all of them, or every ``k``-th with segments recomputed.

The back-gradient pass (:mod:`ddsec.engine.metagrad`) reads ``θ_t`` and the inner optimizer's
state ``s_t`` for ``t = T−1 … 0``. Keeping all of them costs ``O(T·(|θ| + |s|))``. With a
checkpoint every ``k`` steps (Griewank's checkpointing, ``k = ⌈√T⌉`` by default) the forward
unroll keeps only ``(θ_0, s_0), (θ_k, s_k), (θ_2k, s_2k), …``; on the way back, the first read
inside a segment ``[a, a+k)`` recomputes ``θ_{a+1} …`` from ``(θ_a, s_a)`` with the same step
function (the same step of the plan, hyper-parameters and step index ``t``, which Adam's bias
correction reads), so the recomputed values are those of the forward pass and the gradients are
exactly the same. Peak memory: ``⌈T/k⌉`` checkpoints plus one segment, ``O(√T·(|θ| + |s|))``; the
price is one more first-order inner gradient for most steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Generic, TypeVar

from torch import Tensor

Tensors = tuple[Tensor, ...]
Graph = TypeVar("Graph")


def segment_length(theta_every: int | str | None, steps: int) -> int | None:
    """``k``, the distance between kept ``θ_t``, from the user's option and ``T = steps``.

    Args:
        theta_every: ``None`` (keep every ``θ_t``), ``"auto"`` (``⌈√T⌉``) or a positive int.

    Returns:
        ``k >= 2``, or ``None`` when every ``θ_t`` is kept (also for ``k = 1``).
    """
    if theta_every is None:
        return None
    if theta_every == "auto":
        every = math.ceil(math.sqrt(steps))
    elif isinstance(theta_every, int) and not isinstance(theta_every, bool) and theta_every >= 1:
        every = theta_every
    else:
        raise ValueError(f"theta_every must be None, 'auto' or a positive int, got {theta_every!r}")
    return None if every == 1 else every


class ThetaTape(Generic[Graph]):
    """``θ_t``, ``s_t`` and (when graphs are kept) step ``t``'s graph, for the walk ``t = T−1 … 0``.

    Args:
        step: one inner step, ``step(t, θ_t, s_t, graph) -> (θ_{t+1}, s_{t+1}, step t's graph if
            graph else None)``: deterministic, outputs detached; the graph is whatever the back
            pass reads (``G_t`` with its graph and leaves).
        steps: ``T``.
        every: ``k`` from :func:`segment_length`: keep every ``k``-th ``θ_t``; ``None``: all.
        keep_graphs: keep step graphs for the back pass: with ``every=None`` every step's, from
            the forward unroll (``O(T·activations)``); with checkpoints the current segment's,
            built when it is recomputed.
    """

    def __init__(
        self,
        step: Callable[[int, Tensors, Tensors, bool], tuple[Tensors, Tensors, Graph | None]],
        steps: int,
        every: int | None,
        keep_graphs: bool,
    ) -> None:
        self._step, self._steps, self._every, self._keep = step, steps, every, keep_graphs
        self._saved: dict[int, tuple[Tensors, Tensors]] = {}
        self._graphs: dict[int, Graph] = {}

    def unroll(self, theta: Tensors) -> tuple[Tensors, Tensors]:
        """The forward unroll from ``θ_0`` (``[M, …]`` tensors) and the empty state: ``(θ_T, s_T)``."""
        state: Tensors = ()
        for t in range(self._steps):
            if self._every is None or t % self._every == 0:
                self._saved[t] = (theta, state)
            theta, state, graph = self._step(t, theta, state, self._keep and self._every is None)
            if graph is not None:
                self._graphs[t] = graph
        return theta, state

    def pop(self, t: int) -> tuple[Tensors, Tensors, Graph | None]:
        """``(θ_t, s_t, step t's graph or None)``, forgotten here; call for ``t = T−1, T−2, …, 0``.

        The graph is ``None`` when it was not kept (the caller builds it).
        """
        if t not in self._saved:
            self._recompute(t)
        theta, state = self._saved.pop(t)
        return theta, state, self._graphs.pop(t, None)

    def _recompute(self, last: int) -> None:
        """``θ_u, s_u`` for ``u`` from the segment's start to ``last`` from its checkpoint (and
        the graphs of those steps when keeping graphs)."""
        start = last - last % self._every
        theta, state = self._saved[start]
        for u in range(start, last + 1):
            self._saved[u] = (theta, state)
            if u < last or self._keep:
                theta, state, graph = self._step(u, theta, state, self._keep)
                if graph is not None:
                    self._graphs[u] = graph
