"""Poison detectors: one strategy object per method, each scoring every sample (higher: more suspect).

A detector has a ``name``, ``needs_model`` (whether it reads a model, or only the pixels) and one
method, ``detect(probe) -> (scores, flags)``: continuous scores (float ``[N]``) for the ROC
metrics, and the flags (bool ``[N]``) of its own decision rule (the threshold its paper or its
usual implementation applies) for the TP/FP/FN/TN counts.

- :class:`SpectralSignatures` — Tran, Li and Madry, NeurIPS 2018: per class, the squared
  projection of centred features on their top singular vector; flags the top ``1.5·ε`` of each
  class (``ε`` the expected poison fraction).
- :class:`ActivationClustering` — Chen et al., 2018: per class, PCA to 10 dimensions and 2-means;
  flags the smaller cluster when it holds less than 35 % of the class.
- :class:`DeepKNN` — Peri et al., 2020: the share of a sample's ``k`` nearest neighbours in feature
  space with another label; flags samples whose neighbours' plurality label is not their own.
- :class:`LossScore`, :class:`GradientNorm`, :class:`GradientMisalignment` — the per-sample loss,
  gradient norm and (one minus) the cosine with the class's mean gradient direction; a one-step poison must
  move a trained model far, so it needs an outsized, unusual gradient. Flags a robust z-score
  above 3.5 (median and MAD, Iglewicz and Hoaglin; of the logarithm for the loss and the norm).
- :class:`PixelStatistics` — values outside ``[0, 1]``, the share of values off the 8-bit grid, and
  the distance of an image's 8-bit histogram from the whole set's; flags any value outside, or a
  robust z-score above 3.5 of either share (a set whose images are all off the grid flags none
  for it); needs no model.

scikit-learn does the PCA, k-means and neighbour search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ddsec.data.pixels import LEVELS, to_pixels
from ddsec.defences.probe import ModelProbe
from ddsec.errors import DDSecError

ROBUST_Z = 3.5


def robust_z(scores: Tensor) -> Tensor:
    """Modified z-scores ``0.6745 (s − median) / MAD`` of ``scores`` ``[N]``; where more than half the
    scores equal the median (MAD 0), every other value is infinitely far (±inf)."""
    median = scores.median()
    mad = (scores - median).abs().median()
    if float(mad) == 0:
        return torch.where(scores == median, 0.0, torch.copysign(torch.tensor(float("inf")), scores - median))
    return 0.6745 * (scores - median) / mad


def _by_class(labels: Tensor):
    for c in labels.unique().tolist():
        yield c, (labels == c).nonzero().flatten()


@dataclass(frozen=True)
class SpectralSignatures:
    """Spectral signatures, per class; ``expected_fraction`` sets the own rule's cut (top ``1.5·ε``)."""

    expected_fraction: float = 0.05
    name: str = "spectral"
    needs_model: bool = True

    def detect(self, probe: ModelProbe) -> tuple[Tensor, Tensor]:
        """Per-class squared projections, divided by their class mean so classes compare."""
        features, scores = probe.features.double(), torch.zeros(len(probe.labels), dtype=torch.float64)
        for _, index in _by_class(probe.labels):
            if len(index) < 2:
                continue
            centred = features[index] - features[index].mean(0)
            top = torch.linalg.svd(centred, full_matrices=False).Vh[0]
            projection = (centred @ top) ** 2
            scores[index.cpu()] = (projection / projection.mean().clamp_min(1e-30)).cpu()
        flagged = torch.zeros(len(scores), dtype=torch.bool)
        for _, index in _by_class(probe.labels.cpu()):
            count = int(np.ceil(1.5 * self.expected_fraction * len(index)))
            flagged[index[scores[index].argsort(descending=True)[:count]]] = True
        return scores.float(), flagged


@dataclass(frozen=True)
class ActivationClustering:
    """Activation clustering, per class: PCA to ``dims`` and 2-means; ``max_share`` bounds a poison cluster."""

    dims: int = 10
    max_share: float = 0.35
    seed: int = 0
    name: str = "activation-clustering"
    needs_model: bool = True

    def detect(self, probe: ModelProbe) -> tuple[Tensor, Tensor]:
        """Scores: how much nearer a sample lies to its class's smaller cluster than to the larger
        one, in units of the class's spread."""
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        features = probe.features.cpu().double().numpy()
        scores, flagged = torch.zeros(len(probe.labels)), torch.zeros(len(probe.labels), dtype=torch.bool)
        for _, index in _by_class(probe.labels.cpu()):
            if len(index) < 3:
                continue
            reduced = PCA(n_components=min(self.dims, len(index) - 1, features.shape[1]),
                          random_state=self.seed).fit_transform(features[index.numpy()])
            kmeans = KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit(reduced)
            small = int(np.argmin(np.bincount(kmeans.labels_, minlength=2)))
            distance = kmeans.transform(reduced)
            gap = distance[:, 1 - small] - distance[:, small]
            scores[index] = torch.from_numpy(gap / max(float(reduced.std()), 1e-12)).float()
            members = torch.from_numpy(kmeans.labels_ == small)
            if float(members.float().mean()) < self.max_share:
                flagged[index[members]] = True
        return scores, flagged


@dataclass(frozen=True)
class DeepKNN:
    """Deep k-NN: label disagreement among the ``k`` nearest neighbours in feature space."""

    k: int = 10
    name: str = "knn"
    needs_model: bool = True

    def detect(self, probe: ModelProbe) -> tuple[Tensor, Tensor]:
        """Scores: the share of neighbours whose label differs."""
        from sklearn.neighbors import NearestNeighbors

        features = probe.features.cpu().numpy()
        k = min(self.k, len(features) - 1)
        if k < 1:
            raise DDSecError("deep k-NN needs at least two samples")
        _, index = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
        labels = probe.labels.cpu()
        neighbours = labels[torch.from_numpy(index[:, 1:])]  # [N, k], self dropped
        return (neighbours != labels.unsqueeze(1)).float().mean(1), torch.mode(neighbours, dim=1).values != labels


@dataclass(frozen=True)
class _RobustOutlier:
    """A positive per-sample statistic (:meth:`score`) flagged where the robust z-score of its
    logarithm exceeds 3.5 (losses and gradient norms of a trained model span orders of magnitude:
    on the raw values the MAD is tiny and a quarter of the clean samples would be flagged)."""

    def detect(self, probe: ModelProbe) -> tuple[Tensor, Tensor]:
        scores = self.score(probe).float()
        return scores, robust_z(scores.clamp_min(1e-12).log()) > ROBUST_Z


@dataclass(frozen=True)
class LossScore(_RobustOutlier):
    """The per-sample loss against the given label."""

    name: str = "loss"
    needs_model: bool = True

    def score(self, probe: ModelProbe) -> Tensor:
        return probe.losses.cpu()


@dataclass(frozen=True)
class GradientNorm(_RobustOutlier):
    """The per-sample gradient norm ‖∇_θ ℓ‖."""

    name: str = "gradient-norm"
    needs_model: bool = True

    def score(self, probe: ModelProbe) -> Tensor:
        return probe.gradient_norms.cpu()


@dataclass(frozen=True)
class GradientMisalignment:
    """One minus the cosine between a sample's gradient and its class's mean gradient direction,
    flagged above a robust z-score of 3.5."""

    name: str = "gradient-alignment"
    needs_model: bool = True

    def detect(self, probe: ModelProbe) -> tuple[Tensor, Tensor]:
        scores = (1 - probe.gradient_cosines.cpu()).float()
        return scores, robust_z(scores) > ROBUST_Z


@dataclass(frozen=True)
class PixelStatistics:
    """Out-of-range and off-grid pixel shares plus the total-variation distance of each image's
    8-bit histogram from the whole set's; ``mean``/``std`` undo the normalisation."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = "pixels"
    needs_model: bool = False

    def _parts(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pixels = to_pixels(images.cpu().double(), self.mean, self.std).flatten(1)
        outside = ((pixels < -1e-6) | (pixels > 1 + 1e-6)).double().mean(1)
        levels = pixels.clamp(0, 1) * LEVELS
        off_grid = ((levels - levels.round()).abs() > 1e-2).double().mean(1)
        counts = torch.stack([torch.bincount(row, minlength=LEVELS + 1) for row in levels.round().long()]).double()
        histograms = counts / counts.sum(1, keepdim=True)
        distance = 0.5 * (histograms - histograms.mean(0)).abs().sum(1)
        return outside, off_grid, distance

    def detect(self, probe: ModelProbe) -> tuple[Tensor, Tensor]:
        outside, off_grid, distance = self._parts(probe.images)
        flagged = (outside > 0) | (robust_z(off_grid.float()) > ROBUST_Z) | (robust_z(distance.float()) > ROBUST_Z)
        return (outside + off_grid + distance).float(), flagged


DETECTOR_NAMES = ("spectral", "activation-clustering", "knn", "loss", "gradient-norm", "gradient-alignment", "pixels")


def detector_names(names: list[str]) -> list[str]:
    """The names asked for (``all`` for every one), in :data:`DETECTOR_NAMES` order.

    Raises:
        DDSecError: an unknown name (one line, listing the known ones).
    """
    unknown = sorted(set(names) - set(DETECTOR_NAMES) - {"all"})
    if unknown:
        raise DDSecError(f"unknown detector {unknown[0]!r}; choose from {', '.join(DETECTOR_NAMES)} or all")
    return [name for name in DETECTOR_NAMES if "all" in names or name in names]


def make_detectors(names: list[str], *, mean: tuple[float, ...], std: tuple[float, ...],
                   expected_fraction: float, k: int = 10) -> list:
    """Detectors by name (see :func:`detector_names`); ``mean``/``std`` undo the data's normalisation,
    ``expected_fraction`` sets the spectral cut and ``k`` the neighbours of deep k-NN."""
    wanted = detector_names(names)
    built = {"spectral": SpectralSignatures(expected_fraction), "activation-clustering": ActivationClustering(),
             "knn": DeepKNN(k), "loss": LossScore(), "gradient-norm": GradientNorm(),
             "gradient-alignment": GradientMisalignment(), "pixels": PixelStatistics(mean, std)}
    return [built[name] for name in wanted]
