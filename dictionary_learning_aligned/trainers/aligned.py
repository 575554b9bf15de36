"""The aligned trainers: each is its base trainer with ``alignment="project"`` by default and nothing else changed
(the reparameterization lives in :mod:`..alignment` and the dictionaries). Each is made by
:func:`~.base.make_aligned` in its architecture's own file; this module gathers them."""

from .base import make_aligned
from .p_anneal import AlignedPAnnealTrainer
from .standard import AlignedStandardTrainer
from .top_k import AlignedBatchTopKTrainer, AlignedTopKTrainer

__all__ = ["make_aligned", "AlignedStandardTrainer", "AlignedTopKTrainer", "AlignedBatchTopKTrainer",
           "AlignedPAnnealTrainer"]
