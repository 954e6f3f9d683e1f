"""Cross-check against the Adversarial Robustness Toolbox (``pip install 'ddsec[art]'``).

ART's ``SpectralSignatureDefense`` and ``ActivationDefence`` run on the same data and model through
its ``PyTorchClassifier``; the flags are compared with ddsec's own spectral and
activation-clustering rules. ART reads the activations of a classifier's last child module, so
the model is wrapped to make that the representation ddsec's detectors read (the input of the last
linear layer). ART's spectral cut assumes a large poison fraction (``expected_pp_poison`` 0.33 by
default); it is set from the real fraction here. ART's spectral score projects the *uncentred*
features on the top singular vector (Tran et al. centre them), so the two rank alike only where
a class's mean has no component along that direction. ActivationDefence runs with PCA to 10 dimensions
and its default ``smaller`` analysis (the smaller cluster of each class is poison), compared with
ddsec's clustering under the same rule (``max_share=0.5``); ART 1.20's ``relative-size`` analysis,
ddsec's default rule, fails on current numpy.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from ddsec.defences.detectors import ActivationClustering
from ddsec.defences.probe import ModelProbe
from ddsec.defences.screening import InjectedData
from ddsec.engine.population import Params, population_size, select
from ddsec.errors import DDSecError
from ddsec.features import PENULTIMATE, feature_module, features

SHARED = ("spectral", "activation-clustering")


class _Penultimate(nn.Module):
    """Images ``[B, C, H, W]`` → the input of ``model``'s last linear layer ``[B, D]``, with ``params``."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor]) -> None:
        super().__init__()
        self.model, self.params = model, params

    def forward(self, x: Tensor) -> Tensor:
        return features(self.model, self.params, x)


class _FeaturesLast(nn.Module):
    """The model as ART sees it: one child, ``features``, whose output ART reads; the logits follow."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor]) -> None:
        super().__init__()
        self.features = _Penultimate(model, params)
        head, _ = feature_module(model, PENULTIMATE)
        name = next(n for n, m in model.named_modules() if m is head)
        self.weight, self.bias = params[f"{name}.weight"], params.get(f"{name}.bias")

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(self.features(x), self.weight, self.bias)


def require_art() -> None:
    """Fail in one line unless the adversarial-robustness-toolbox is installed."""
    if importlib.util.find_spec("art") is None:
        raise DDSecError("the ART cross-check needs the adversarial-robustness-toolbox: pip install 'ddsec[art]'")


def art_flags(model: nn.Module, params: dict[str, Tensor], images: Tensor, labels: Tensor, num_classes: int,
              poison_fraction: float, seed: int = 0) -> dict[str, Tensor]:
    """ART's flags (bool ``[N]``) for ``spectral`` and ``activation-clustering`` on one model.

    Raises:
        DDSecError: the ``art`` extra is not installed.
    """
    require_art()
    import numpy as np
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    wrapped = _FeaturesLast(model, {k: v.detach().cpu() for k, v in params.items()}).eval()
    classifier = PyTorchClassifier(wrapped, loss=nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]),
                                   nb_classes=num_classes, device_type="cpu")
    x = images.cpu().numpy().astype(np.float32)
    y = np.eye(num_classes, dtype=np.float32)[labels.cpu().numpy()]
    spectral = SpectralSignatureDefense(classifier, x, y, expected_pp_poison=poison_fraction)
    _, spectral_clean = spectral.detect_poison()
    np.random.seed(seed)  # ART's MiniBatchKMeans draws from numpy's global generator
    clustering = ActivationDefence(classifier, x, y)
    _, clustering_clean = clustering.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA",
                                                   cluster_analysis="smaller")
    return {"spectral": torch.tensor(spectral_clean) == 0, "activation-clustering": torch.tensor(clustering_clean) == 0}


def agreement(ours: Tensor, theirs: Tensor) -> dict[str, float]:
    """How two bool flag vectors ``[N]`` agree: the share of samples with the same verdict, and the
    Jaccard index of the flagged sets (1 when both flag nothing)."""
    union = int((ours | theirs).sum())
    return {"same_verdict": float((ours == theirs).float().mean()),
            "jaccard": 1.0 if union == 0 else int((ours & theirs).sum()) / union}


def cross_check(model: nn.Module, params: Params, data: InjectedData, detectors: list, num_classes: int,
                seed: int = 0) -> dict[str, dict[str, float]]:
    """Agreement (:func:`agreement`, averaged over the ``M`` models of ``params``) between ART's flags
    and ddsec's own rule for each of ``detectors`` that ART also has; clustering is compared under
    ART's ``smaller`` rule.

    Raises:
        DDSecError: ART is not installed.
        ValueError: none of ``detectors`` is spectral or activation clustering.
    """
    ours = [ActivationClustering(d.dims, 0.5, d.seed) if isinstance(d, ActivationClustering) else d
            for d in detectors if d.name in SHARED]
    if not ours:
        raise ValueError("the ART cross-check needs a spectral or activation-clustering detector")
    fraction = float(data.is_poison.float().mean())
    models = population_size(params)
    totals: dict[str, dict[str, float]] = {d.name: {"same_verdict": 0.0, "jaccard": 0.0} for d in ours}
    for m in range(models):
        one = select(params, m)
        theirs = art_flags(model, one, data.images, data.labels, num_classes, fraction, seed)
        device = next(iter(one.values())).device
        probe = ModelProbe(model, one, data.images.to(device), data.labels.to(device))
        for detector in ours:
            for key, value in agreement(detector.detect(probe)[1], theirs[detector.name]).items():
                totals[detector.name][key] += value / models
    return totals
