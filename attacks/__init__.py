"""K→T poisoning with distilled data (``ddsec poison``). Import as ``ddsec.attacks``.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §3.4: a few distilled images such that
one SGD step on them makes already-trained classifiers predict class ``K`` as ``T`` while the
other classes stay right. :mod:`~ddsec.attacks.poison` learns the batch over a population of
pretrained models (by default the strongest within a collateral budget,
:mod:`~ddsec.attacks.collateral`), :mod:`~ddsec.attacks.sweep` runs it for many class pairs,
:mod:`~ddsec.attacks.metrics` measures it on held-out ones, and
:mod:`~ddsec.attacks.baselines` gives the label-flip baselines of the same size;
:mod:`~ddsec.attacks.victims` and :mod:`~ddsec.attacks.stress` replay a batch under realistic
victims (the robustness matrix).
"""

from ddsec.attacks.baselines import FLIP_KINDS, FlipResult, run_flip_baseline
from ddsec.attacks.collateral import CollateralBudget, Measurement, TrainingCheck
from ddsec.attacks.metrics import AttackMetrics, AttackResult, attack_metrics, evaluate_attack, relabel
from ddsec.attacks.poison import (
    PoisonConfig,
    PoisonJob,
    PoisonOutcome,
    PoisonTask,
    prepare_from_file,
    prepare_poison,
    run_poison,
)
from ddsec.attacks.stress import StressCell, stress_matrix, train_victims
from ddsec.attacks.sweep import SweepResult, parse_pairs, prepare_sweep, run_sweep
from ddsec.attacks.victims import PAPER_VICTIM, STANDARD_VICTIMS, Victim, parse_victim, victim_spec

__all__ = [
    "FLIP_KINDS",
    "PAPER_VICTIM",
    "STANDARD_VICTIMS",
    "AttackMetrics",
    "AttackResult",
    "CollateralBudget",
    "FlipResult",
    "Measurement",
    "PoisonConfig",
    "PoisonJob",
    "PoisonOutcome",
    "PoisonTask",
    "StressCell",
    "SweepResult",
    "TrainingCheck",
    "Victim",
    "attack_metrics",
    "evaluate_attack",
    "parse_pairs",
    "parse_victim",
    "prepare_from_file",
    "prepare_poison",
    "prepare_sweep",
    "relabel",
    "run_flip_baseline",
    "run_poison",
    "run_sweep",
    "stress_matrix",
    "train_victims",
    "victim_spec",
]
