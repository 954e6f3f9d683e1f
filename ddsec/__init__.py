"""ddsec: dataset distillation for security research.

Distils a labelled image dataset into a few synthetic images plus a learned step-size
schedule (Wang, Zhu, Torralba and Efros, "Dataset Distillation", arXiv 1811.10959), and uses
the same engine for one-step poisoning batches and few-shot domain adaptation.
"""

from ddsec.errors import DDSecError

__version__ = "0.1.0"

__all__ = ["DDSecError", "__version__"]
