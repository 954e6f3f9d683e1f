"""Detection metrics as ART, BackdoorBench and Armory report them.

Scores are continuous suspicion (higher: more likely poison) with the ground truth ``is_poison``;
``AUROC`` and the ROC curve come from ``sklearn.metrics``. An *operating point* at a false-positive
rate ``α`` is the threshold that flags as many poisons as possible while flagging at most a share
``α`` of the clean samples (flag: ``score >= threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ddsec.errors import DDSecError


def check_fpr(fpr: float) -> float:
    """``fpr`` if it lies in (0, 1); otherwise a one-line error."""
    if not 0 < fpr < 1:
        raise DDSecError(f"a false-positive rate must lie strictly between 0 and 1, got {fpr}")
    return fpr


def _arrays(scores: Tensor, is_poison: Tensor) -> tuple[np.ndarray, np.ndarray]:
    truth = is_poison.cpu().numpy().astype(bool)
    if truth.all() or not truth.any():
        raise ValueError("ROC metrics need both poisoned and clean samples")
    return scores.detach().cpu().double().numpy(), truth


def auroc(scores: Tensor, is_poison: Tensor) -> float:
    """Area under the ROC curve of ``scores`` ``[N]`` against bool ``is_poison`` ``[N]``."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(*reversed(_arrays(scores, is_poison))))


@dataclass(frozen=True)
class OperatingPoint:
    """The best threshold within a false-positive budget, and what it achieves."""

    threshold: float
    tpr: float
    fpr: float


def operating_point(scores: Tensor, is_poison: Tensor, fpr: float) -> OperatingPoint:
    """The threshold with the highest true-positive rate among those whose false-positive rate
    is at most ``fpr`` (``inf`` flags nothing, if no threshold keeps within it)."""
    from sklearn.metrics import roc_curve

    values, truth = _arrays(scores, is_poison)
    fprs, tprs, thresholds = roc_curve(truth, values, drop_intermediate=False)
    best = int(np.flatnonzero(fprs <= check_fpr(fpr))[-1])
    return OperatingPoint(float(thresholds[best]), float(tprs[best]), float(fprs[best]))


def roc_points(scores: Tensor, is_poison: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of the ROC curve, for plotting."""
    from sklearn.metrics import roc_curve

    values, truth = _arrays(scores, is_poison)
    fprs, tprs, _ = roc_curve(truth, values)
    return fprs, tprs


def confusion(flags: Tensor, is_poison: Tensor) -> dict[str, int]:
    """TP, FP, FN and TN of bool ``flags`` ``[N]`` against ``is_poison`` ``[N]``."""
    flags, truth = flags.cpu().bool(), is_poison.cpu().bool()
    return {"tp": int((flags & truth).sum()), "fp": int((flags & ~truth).sum()),
            "fn": int((~flags & truth).sum()), "tn": int((~flags & ~truth).sum())}


def mean_roc(scores: list[Tensor], is_poison: Tensor, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curves of several models' ``scores`` (each ``[N]``) averaged vertically (mean
    true-positive rate at each false-positive rate of a log-spaced grid): ``(fpr, tpr)``."""
    grid = np.concatenate([[0.0], np.logspace(-5, 0, points)])
    curves = [np.interp(grid, *roc_points(s, is_poison)) for s in scores]
    return grid, np.mean(curves, axis=0)
