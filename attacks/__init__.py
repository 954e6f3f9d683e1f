"""K→T poisoning front end (``ddsec poison``): not implemented yet.

Planned (issue 4): an objective that replaces every label K with T on real batches, trained over
a population of pretrained classifiers (Wang et al., arXiv 1811.10959, §3.4), with attack metrics
and label-flip baselines. Importable as ``ddsec.attacks`` only.
"""
