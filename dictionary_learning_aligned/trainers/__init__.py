"""Trainers: thin classes over :class:`~.base.DictionaryTrainer`, one sparsity term each, and their aligned
versions (the same classes with ``alignment="project"``). Each architecture's file registers it in
:mod:`..registry`; importing this package registers the built-ins (one import line per architecture below)."""

from .base import DictionaryTrainer, SAETrainer, get_lr_schedule, get_sparsity_warmup_fn, make_aligned
from .standard import AlignedStandardTrainer, StandardTrainer
from .top_k import AlignedBatchTopKTrainer, AlignedTopKTrainer, BatchTopKTrainer, TopKTrainer, geometric_median
from .p_anneal import AlignedPAnnealTrainer, PAnnealTrainer
from .jumprelu import AlignedJumpReluTrainer, JumpReluTrainer
from .matryoshka import AlignedMatryoshkaBatchTopKTrainer, MatryoshkaBatchTopKTrainer


def __getattr__(name):
    # TRAINER_CLASSES is read from the registry at access time, so that architectures registered later (a
    # user's module) are included
    if name == "TRAINER_CLASSES":
        from ..registry import trainer_classes

        return trainer_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SAETrainer", "DictionaryTrainer", "get_lr_schedule", "get_sparsity_warmup_fn", "geometric_median",
           "make_aligned", "TRAINER_CLASSES", "StandardTrainer", "AlignedStandardTrainer", "TopKTrainer",
           "AlignedTopKTrainer", "BatchTopKTrainer", "AlignedBatchTopKTrainer", "PAnnealTrainer",
           "AlignedPAnnealTrainer"]
