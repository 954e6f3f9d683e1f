"""The distillation engine: unrolled inner SGD and its back-gradient (HVP) pass.

Wang et al., "Dataset Distillation" (arXiv 1811.10959). Imports only torch and ddsec's own
types; the front ends (distill, poison, adapt) build on it.
"""

from ddsec.engine.checkpoint import (
    DEFAULT_CHECKPOINT_SECONDS,
    CheckpointSchedule,
    LoopState,
    load_checkpoint,
    require_checkpoint,
    save_checkpoint,
)
from ddsec.engine.distributed import PeerLostError, World, world
from ddsec.engine.distributions import (
    FIXED_KINDS,
    FixedInit,
    InitDistribution,
    PopulationInit,
    RandomInit,
    distinct_draws,
    draw_limit,
)
from ddsec.engine.init import INIT_SCHEMES, init_module_, init_tensors
from ddsec.engine.compiled import COMPILE_CHOICES, use_compile
from ddsec.engine.inner import SGD, Adam, InnerOptimizer
from ddsec.engine.metagrad import MODES, CompileFallback, MetaGradient, meta_grad, meta_grads
from ddsec.engine.objective import ClassificationObjective, Objective, RealBatches
from ddsec.engine.loop import LoopResult, Method, StepOutcome, Tick, run_loop
from ddsec.engine.outer import DistillResult, Dual, ImageConstraint, MetaGradientAdam, Progress, distill
from ddsec.engine.schedule import InnerStep, replay, shift_images
from ddsec.engine.population import (
    population_forward,
    population_size,
    resolve_batching,
    select,
    stack_params,
)
from ddsec.engine.synthetic import SyntheticSet, class_major_labels, inverse_softplus
from ddsec.engine.unroll import unroll

__all__ = [
    "SGD",
    "Adam",
    "InnerOptimizer",
    "InnerStep",
    "COMPILE_CHOICES",
    "DEFAULT_CHECKPOINT_SECONDS",
    "FIXED_KINDS",
    "INIT_SCHEMES",
    "MODES",
    "CheckpointSchedule",
    "ClassificationObjective",
    "CompileFallback",
    "DistillResult",
    "Dual",
    "FixedInit",
    "ImageConstraint",
    "InitDistribution",
    "LoopResult",
    "LoopState",
    "Method",
    "MetaGradientAdam",
    "MetaGradient",
    "Objective",
    "PopulationInit",
    "PeerLostError",
    "Progress",
    "RandomInit",
    "RealBatches",
    "StepOutcome",
    "SyntheticSet",
    "Tick",
    "World",
    "class_major_labels",
    "distill",
    "distinct_draws",
    "draw_limit",
    "init_module_",
    "init_tensors",
    "inverse_softplus",
    "load_checkpoint",
    "meta_grad",
    "meta_grads",
    "population_forward",
    "population_size",
    "require_checkpoint",
    "replay",
    "resolve_batching",
    "run_loop",
    "save_checkpoint",
    "select",
    "shift_images",
    "stack_params",
    "unroll",
    "use_compile",
    "world",
]
