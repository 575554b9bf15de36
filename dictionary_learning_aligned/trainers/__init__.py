"""Trainers: thin classes over :class:`~.base.DictionaryTrainer`, one sparsity term each, and their aligned
versions (the same classes with ``alignment="project"``)."""

from .aligned import (AlignedBatchTopKTrainer, AlignedPAnnealTrainer, AlignedStandardTrainer, AlignedTopKTrainer,
                      make_aligned)
from .base import DictionaryTrainer, SAETrainer, get_lr_schedule, get_sparsity_warmup_fn
from .p_anneal import PAnnealTrainer
from .standard import StandardTrainer
from .top_k import BatchTopKTrainer, TopKTrainer, geometric_median

TRAINER_CLASSES = {c.__name__: c for c in (
    StandardTrainer, AlignedStandardTrainer, TopKTrainer, AlignedTopKTrainer, BatchTopKTrainer,
    AlignedBatchTopKTrainer, PAnnealTrainer, AlignedPAnnealTrainer)}

__all__ = ["SAETrainer", "DictionaryTrainer", "get_lr_schedule", "get_sparsity_warmup_fn", "geometric_median",
           "make_aligned", "TRAINER_CLASSES", *TRAINER_CLASSES]
