"""Compute budgets: "the best you can do in 10 minutes" instead of an iteration count.

A run with a budget measures its own seconds per outer iteration over its first iterations and
then sets the iteration count that fills the budget, and its step-decay points as fractions of
that count (:func:`planner`, handed to the outer loop as ``replan``). The plan is stored in the
checkpoint and the exported metadata; a resumed run keeps it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from ddsec.errors import DDSecError

_UNITS = {"s": 1, "m": 60, "h": 3600}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90s``, ``10m``, ``2h``, ``1h30m`` (a bare number is seconds).

    Raises:
        DDSecError: not a positive duration (one line, with examples).
    """
    compact = text.strip().lower().replace(" ", "")
    try:
        seconds = float(compact)
    except ValueError:
        parts = _PART.findall(compact)
        if not parts or "".join(value + unit for value, unit in parts) != compact:
            raise DDSecError(f"--budget must be a duration such as 90s, 10m, 2h or 1h30m, got {text!r}") from None
        seconds = sum(float(value) * _UNITS[unit] for value, unit in parts)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise DDSecError(f"--budget must be a positive duration, got {text!r}")
    return seconds


def planner(budget: str, decay_fraction: float | None, decay_every: int | None = None
            ) -> Callable[[float], tuple[int, int | None]]:
    """``replan(seconds_per_iteration) -> (iterations, decay_every)`` filling ``budget``.

    Args:
        budget: a duration for :func:`parse_duration`: the outer loop's time, not loading or
            evaluation.
        decay_fraction: decay the learning rates every this fraction of the run.
        decay_every: without ``decay_fraction``, the fixed decay interval kept as it is (``None``: never).
    """
    seconds = parse_duration(budget)

    def replan(per_iteration: float) -> tuple[int, int | None]:
        iterations = max(1, int(seconds / max(per_iteration, 1e-9)))
        every = decay_every if decay_fraction is None else max(1, round(decay_fraction * iterations))
        return iterations, every

    return replan
