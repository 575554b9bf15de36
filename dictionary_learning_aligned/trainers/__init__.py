"""Trainers: thin classes over :class:`~.base.DictionaryTrainer`, one sparsity loss each."""

from .base import DictionaryTrainer, SAETrainer, get_lr_schedule, get_sparsity_warmup_fn
from .standard import AlignedStandardTrainer, StandardTrainer

TRAINER_CLASSES = {c.__name__: c for c in (StandardTrainer, AlignedStandardTrainer)}

__all__ = [
    "SAETrainer", "DictionaryTrainer", "StandardTrainer", "AlignedStandardTrainer",
    "get_lr_schedule", "get_sparsity_warmup_fn", "TRAINER_CLASSES",
]
