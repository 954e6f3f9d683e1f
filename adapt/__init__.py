"""Few-shot domain adaptation front end (``ddsec adapt``): not implemented yet.

Planned (issue 5): distilled target-domain images that adapt source-pretrained models
(Wang et al., arXiv 1811.10959, §3.5): digit pairs among MNIST/USPS/SVHN, and an ImageNet AlexNet
adapted to PASCAL-VOC / CUB-200. Importable as ``ddsec.adapt`` only.
"""
