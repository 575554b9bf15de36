"""The aligned trainers: each is its base trainer with ``alignment="project"`` by default and nothing else changed
(the reparameterization lives in :mod:`..alignment` and the dictionaries)."""

from __future__ import annotations

from typing import Optional

from ..alignment import check_mode
from .p_anneal import PAnnealTrainer
from .standard import StandardTrainer
from .top_k import BatchTopKTrainer, TopKTrainer


def make_aligned(base: type) -> type:
    """Create ``Aligned<Base>``: ``base`` with aligned training (arXiv 2605.18629) switched on.

    The subclass takes the same arguments; ``alignment`` defaults to ``"project"`` and may be any mode but None
    (e.g. ``"rescale"`` or an ablation). Resampling of dead features is not allowed.
    """

    def __init__(self, *args, alignment: Optional[str] = "project", **kwargs):
        alignment = check_mode(alignment)
        if alignment is None:
            raise ValueError(f"{type(self).__name__} needs an alignment mode; use {base.__name__} for standard training")
        if kwargs.get("resample_steps") is not None:
            raise ValueError("aligned training does not resample dead features; leave resample_steps=None")
        base.__init__(self, *args, alignment=alignment, **kwargs)

    name = f"Aligned{base.__name__}"
    doc = (f":class:`{base.__name__}` with aligned training: the encoder is reparameterized so that "
           f"``<e_i, d_i> = 1`` for every feature at every step (default ``alignment=\"project\"``). Same "
           f"arguments as :class:`{base.__name__}`; ``alignment=None`` or ``resample_steps`` raise ValueError.")
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": __name__, "__qualname__": name})


AlignedStandardTrainer = make_aligned(StandardTrainer)
AlignedTopKTrainer = make_aligned(TopKTrainer)
AlignedBatchTopKTrainer = make_aligned(BatchTopKTrainer)
AlignedPAnnealTrainer = make_aligned(PAnnealTrainer)
