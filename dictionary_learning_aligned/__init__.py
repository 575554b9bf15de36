"""dictionary_learning_aligned: aligned training of sparse autoencoders (arXiv 2605.18629), with the interfaces
of saprmarks/dictionary_learning (``Dictionary``, ``SAETrainer``, ``trainSAE``, ``ActivationBuffer``,
``evaluate``)."""

from .alignment import (
    ALIGNMENT_MODES,
    alignment_scores,
    bimodality_coefficient,
    effective_encoder,
    project_encoder,
    rescale_encoder,
    summarize_scores,
)
from .cache import ActivationCache, build_cache
from .dictionary import AutoEncoder, AutoEncoderTopK, BatchTopKSAE, CheckpointError, Dictionary
from .stability import stability
from .trainers import (AlignedBatchTopKTrainer, AlignedPAnnealTrainer, AlignedStandardTrainer, AlignedTopKTrainer,
                       BatchTopKTrainer, PAnnealTrainer, SAETrainer, StandardTrainer, TopKTrainer)
from .training import LIBRARY_VERSION as __version__
from .training import trainSAE

__all__ = [
    "ALIGNMENT_MODES", "alignment_scores", "bimodality_coefficient", "effective_encoder", "project_encoder",
    "rescale_encoder", "summarize_scores", "AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "CheckpointError",
    "Dictionary", "SAETrainer", "StandardTrainer", "AlignedStandardTrainer", "TopKTrainer", "AlignedTopKTrainer",
    "BatchTopKTrainer", "AlignedBatchTopKTrainer", "PAnnealTrainer", "AlignedPAnnealTrainer", "stability", "trainSAE",
    "ActivationCache", "build_cache", "ActivationBuffer", "evaluate",
    "load_language_model", "__version__",
]


def __getattr__(name):
    # heavy imports (nnsight, transformers) only when asked for
    if name == "ActivationBuffer":
        from .buffer import ActivationBuffer
        return ActivationBuffer
    if name == "evaluate":
        from .evaluation import evaluate
        return evaluate
    if name == "load_language_model":
        from .models import load_language_model
        return load_language_model
    raise AttributeError(f"module 'dictionary_learning_aligned' has no attribute {name!r}")
