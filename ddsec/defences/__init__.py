"""The defender's side: score a victim's training data for poison, measure detection, filter.

:mod:`~ddsec.defences.detectors` holds one strategy object per detection method,
:mod:`~ddsec.defences.metrics` the ROC metrics, :mod:`~ddsec.defences.screening` the injection of a
batch into a victim's data and the victim re-trained after each filter,
:mod:`~ddsec.defences.evasion` the differentiable penalties of an adaptive attacker
(``ddsec poison --evade``) and :mod:`~ddsec.defences.art_check` the cross-check with ART.
The engine never imports this package.
"""

from ddsec.defences.detectors import DETECTOR_NAMES, detector_names, make_detectors, robust_z
from ddsec.defences.metrics import auroc, check_fpr, confusion, operating_point, roc_points
from ddsec.defences.probe import ModelProbe
from ddsec.defences.screening import FILTER_FPR, InjectedData, Screening, inject, screen, train_victim
from ddsec.features import PENULTIMATE, feature_module

__all__ = [
    "DETECTOR_NAMES", "FILTER_FPR", "PENULTIMATE", "InjectedData", "ModelProbe", "Screening", "auroc", "check_fpr",
    "confusion", "detector_names", "feature_module", "inject", "make_detectors", "operating_point", "robust_z", "roc_points", "screen",
    "train_victim",
]
