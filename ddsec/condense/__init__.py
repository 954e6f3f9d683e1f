"""Gradient-matching distillers: DC, DSA, DM and feature-clustered batch sampling.

Zhao, Mopuri and Bilen, "Dataset Condensation with Gradient Matching" (DC, arXiv 2006.05929);
Zhao and Bilen, "Dataset Condensation with Differentiable Siamese Augmentation" (DSA, arXiv
2102.08259); Zhao and Bilen, "Dataset Condensation with Distribution Matching" (DM, arXiv
2110.04181). Instead of unrolling training (:mod:`ddsec.engine`), these condense a dataset by
matching what real and synthetic images do to randomly initialised networks. They share the
data, models, evaluation and export of ``ddsec distill`` and are run by
``ddsec distill --method dc|dsa|dm``.

Modules: :mod:`~ddsec.condense.augment` (DSA), :mod:`~ddsec.condense.matching` (the two
distances), :mod:`ddsec.features` (layer features, shared), :mod:`~ddsec.condense.sampling`
(random and k-means real batches), :mod:`~ddsec.condense.gradient_matching` and
:mod:`~ddsec.condense.distribution_matching` (one outer iteration each),
:mod:`~ddsec.condense.loop` (the methods on the engine's resumable loop),
:mod:`~ddsec.condense.config`, :mod:`~ddsec.condense.protocol` (train-epochs evaluation) and
:mod:`~ddsec.condense.run` (a whole run).
"""

from ddsec.condense.augment import OPERATIONS, default_strategy, dsa, parse_strategy
from ddsec.condense.config import METHODS, CondenseConfig
from ddsec.condense.loop import CondenseProgress, CondenseResult, ImageSGD, condense
from ddsec.condense.matching import embedding_distance, gradient_distance
from ddsec.condense.protocol import PROTOCOLS, default_protocol, evaluate_set
from ddsec.condense.run import CondenseJob, CondenseOutcome, prepare_condense, run_condense

__all__ = [
    "METHODS",
    "OPERATIONS",
    "PROTOCOLS",
    "CondenseConfig",
    "CondenseJob",
    "CondenseOutcome",
    "CondenseProgress",
    "CondenseResult",
    "ImageSGD",
    "condense",
    "default_protocol",
    "default_strategy",
    "dsa",
    "embedding_distance",
    "evaluate_set",
    "gradient_distance",
    "parse_strategy",
    "prepare_condense",
    "run_condense",
]
