"""Few-shot domain adaptation with distilled images (``ddsec adapt``). Import as ``ddsec.adapt``.

Wang et al., "Dataset Distillation" (arXiv 1811.10959), §3.5: a few distilled target-domain
images that, in a few gradient steps, move source-pretrained models to high target accuracy.
:mod:`~ddsec.adapt.adapt` covers the digit pairs among MNIST, USPS and SVHN, and
:mod:`~ddsec.adapt.imagenet` an ImageNet AlexNet adapted to PASCAL-VOC or CUB-200.
"""

from ddsec.adapt.adapt import (
    ADAPT_INITS,
    DIGIT_DOMAINS,
    AdaptConfig,
    adapt_meta,
    finetune_reference,
    pair_defaults,
    pair_shape,
    prepare_adapt,
    source_entry,
)

__all__ = [
    "ADAPT_INITS",
    "DIGIT_DOMAINS",
    "AdaptConfig",
    "adapt_meta",
    "finetune_reference",
    "pair_defaults",
    "pair_shape",
    "prepare_adapt",
    "source_entry",
]
