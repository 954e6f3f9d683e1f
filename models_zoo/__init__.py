"""Model zoo: registered networks, local weight files and trained populations for ddsec.

Networks used by Wang et al., "Dataset Distillation" (arXiv 1811.10959) and by the
gradient-matching benchmarks: ``lenet``, ``alexcifarnet``, ``convnet3``, ``alexnet``, ``mlp``,
plus tiny ``test_mlp`` / ``test_cnn`` models for tests. Importing this package registers them.
All work with ``torch.func.functional_call`` and ``vmap`` over stacked parameters and support
double backward. Populations of trained models are stored as stacked safetensors files or
folders of shards (:mod:`ddsec.models_zoo.population`), trained many models per call
(:mod:`ddsec.models_zoo.train`) into the local zoo (:mod:`ddsec.models_zoo.zoo`, ``ddsec zoo``).
Import as ``ddsec.models_zoo``.
"""

# Importing the model modules registers their factories.
from ddsec.models_zoo import alexcifarnet, alexnet, convnet, lenet, mlp, testing  # noqa: F401
from ddsec.models_zoo.population import load_population, population_metadata, save_population
from ddsec.models_zoo.registry import (
    create_model,
    list_models,
    load_weights,
    register_model,
    save_weights,
)

__all__ = [
    "create_model",
    "list_models",
    "load_population",
    "load_weights",
    "population_metadata",
    "register_model",
    "save_population",
    "save_weights",
]
