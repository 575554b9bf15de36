"""One registry of architectures.

Each architecture is declared once, in its own trainer file, as an :class:`Architecture` and registered by name
with :func:`register`. Everything that needs to know the architectures (demo, train, reproduce, the experiments,
the speed benchmark, the SAEBench adapter, the figures) reads this registry instead of keeping its own table, and
the stacked sweep engine (:mod:`.stacked`) reads the architecture's ``stack_rule``.

Adding an architecture is one file that defines its dictionary, its trainer and an ``Architecture(...)`` passed
to :func:`register`, plus one import line in :mod:`.trainers` (so that the built-ins register on import). A
user's architecture registers the same way from their own module (``module:Class`` names on the command line
import it, and so does ``--plugins MODULE``: :func:`import_plugins`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional

_REGISTRY: dict[str, "Architecture"] = {}


def _no_schedule(steps: int) -> dict:
    return {}


def scaled_lr_schedule(steps: int) -> dict:
    """The learning-rate schedule every built-in architecture scales to a run of ``steps`` steps: warmup over the
    first 5%, linear decay from 80% (no decay for runs of 10 steps or fewer)."""
    return {"warmup_steps": max(1, steps // 20), "decay_start": max(2, int(0.8 * steps)) if steps > 10 else None}


@dataclass(frozen=True)
class Architecture:
    """What the library needs to know about one architecture.

    Attributes:
        name: registry key and the ``arch`` of records (``"relu"``, ``"topk"``...).
        label: name shown in figures and tables (``"ReLU"``).
        trainer: the standard trainer class (a :class:`~.trainers.base.SAETrainer`).
        aligned_trainer: the aligned trainer class (None: the architecture has no aligned twin).
        sparsity_param: the trainer argument that sets sparsity (``"l1_penalty"``, ``"k"``...).
        sparsity_values: the sweep's default values of ``sparsity_param`` (low to high sparsity or as the paper).
        default_sparsity: the single value used by the demo and one-off runs.
        schedule: ``steps -> {trainer kwarg: value}``, the schedule settings scaled to a run of ``steps`` steps
            (warmups, decay start, threshold start, annealing...), used by demo, train and reproduce.
        saebench_kind: how SAEBench treats its dictionaries (``"relu"``, ``"topk"``, ``"batchtopk"``...).
        stack_rule: the :class:`~.stacked.StackRule` subclass that trains many of its dictionaries as one
            batched model (None: trained one trainer at a time).
        in_paper: False for extensions that arXiv 2605.18629 does not evaluate (figures and tables say so).
        fixed_l0: whether ``sparsity_param`` fixes L0 (TopK-style), so comparisons are at equal L0.
    """

    name: str
    label: str
    trainer: type
    aligned_trainer: Optional[type]
    sparsity_param: str
    sparsity_values: tuple
    default_sparsity: float
    schedule: Callable[[int], dict] = _no_schedule
    saebench_kind: str = "relu"
    stack_rule: Optional[type] = None
    in_paper: bool = True
    fixed_l0: bool = False
    extra: dict = field(default_factory=dict)

    def trainer_for(self, alignment: Optional[str]) -> type:
        """The trainer class for an alignment mode (None: standard).

        Raises:
            ValueError: an aligned mode for an architecture without an aligned trainer.
        """
        if alignment is None:
            return self.trainer
        if self.aligned_trainer is None:
            raise ValueError(f"architecture {self.name!r} has no aligned trainer")
        return self.aligned_trainer

    @property
    def dict_class(self) -> type:
        """The dictionary class its trainers build."""
        return self.trainer.dict_class


def register(arch: Architecture) -> Architecture:
    """Add ``arch`` to the registry (returns it, so a module can keep a name for it).

    Raises:
        ValueError: another architecture already has this name (with different trainers); a name that is empty
            or holds a comma or whitespace (the command lines' comma lists could not name it).
        TypeError: not an Architecture; a trainer (or aligned trainer) that is not a subclass of
            :class:`~.trainers.base.SAETrainer`; a ``schedule`` that is not callable.
    """
    from .trainers.base import SAETrainer

    if not isinstance(arch, Architecture):
        raise TypeError(f"register() takes an Architecture, got {type(arch).__name__}")
    if not isinstance(arch.name, str) or not arch.name or any(c == "," or c.isspace() for c in arch.name):
        raise ValueError(f"architecture name must be a non-empty string without commas or spaces, got {arch.name!r}")
    for what, cls in (("trainer", arch.trainer), ("aligned_trainer", arch.aligned_trainer)):
        optional = cls is None and what == "aligned_trainer"
        if not optional and not (isinstance(cls, type) and issubclass(cls, SAETrainer)):
            raise TypeError(f"architecture {arch.name!r}: {what} must be a subclass of SAETrainer, got {cls!r}")
    if not callable(arch.schedule):
        raise TypeError(f"architecture {arch.name!r}: schedule must be a function of steps, got {arch.schedule!r}")
    old = _REGISTRY.get(arch.name)
    if old is not None and (old.trainer, old.aligned_trainer) != (arch.trainer, arch.aligned_trainer):
        raise ValueError(f"architecture {arch.name!r} is already registered with trainer {old.trainer.__name__}")
    _REGISTRY[arch.name] = arch
    return arch


def _load_builtins() -> None:
    importlib.import_module("dictionary_learning_aligned.trainers")


def get(name: str) -> Architecture:
    """The architecture registered under ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; known: {names()}. One of your own is known once the module "
                         "that registers it is imported: `train --plugins MODULE`, or `import MODULE` in Python "
                         "(docs/extending.md)")
    return _REGISTRY[name]


def names(in_paper_only: bool = False) -> list[str]:
    """Registered architecture names, in registration order (built-ins first)."""
    _load_builtins()
    return [n for n, a in _REGISTRY.items() if a.in_paper or not in_paper_only]


def architectures() -> list[Architecture]:
    """Every registered :class:`Architecture`, in registration order."""
    _load_builtins()
    return list(_REGISTRY.values())


def for_trainer(cls_or_name) -> Optional[Architecture]:
    """The architecture whose standard or aligned trainer is ``cls_or_name`` (a class or its name), or whose
    trainer is a base class of it; None when no registered architecture matches."""
    _load_builtins()
    for arch in _REGISTRY.values():
        for t in (arch.trainer, arch.aligned_trainer):
            if t is None:
                continue
            if isinstance(cls_or_name, str) and t.__name__ == cls_or_name:
                return arch
            if isinstance(cls_or_name, type) and t is cls_or_name:
                return arch
    if isinstance(cls_or_name, type):
        for arch in _REGISTRY.values():
            if issubclass(cls_or_name, arch.trainer):
                return arch
    return None


def trainer_classes() -> dict[str, type]:
    """``{class name: class}`` of every registered trainer (standard and aligned)."""
    out = {}
    for arch in architectures():
        for t in (arch.trainer, arch.aligned_trainer):
            if t is not None:
                out[t.__name__] = t
    return out


def import_object(spec: str):
    """Import ``"package.module:Name"`` (a user's trainer or dictionary class) and return the object.

    Raises:
        ValueError: not of the form ``module:Name``, the module cannot be imported, or it has no such name.
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"expected 'module:Name', got {spec!r}")
    mod_name, attr = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {mod_name!r} for {spec!r}: {e}") from None
    if not hasattr(mod, attr):
        raise ValueError(f"module {mod_name!r} has no attribute {attr!r}")
    return getattr(mod, attr)


def import_plugins(modules: Optional[str], flag: str = "--plugins") -> list:
    """Import every module of the comma list ``modules`` (the commands' ``--plugins``: a user's architecture file,
    from the current folder or ``PYTHONPATH``), so that the architectures (``register(...)``) and dictionary classes
    (``@register_dictionary``) they define are known before any name is looked up or checkpoint loaded. Returns
    the imported modules (none for None or "").

    Raises:
        ValueError: a module that cannot be imported (named, with the import error).
    """
    from .dtypes import comma_list

    out = []
    for name in comma_list(modules or "", flag=flag):
        try:
            out.append(importlib.import_module(name))
        except ImportError as e:
            raise ValueError(f"{flag}: cannot import module {name!r} (from the current folder or PYTHONPATH): "
                             f"{e}") from None
    return out


def resolve_trainer(spec) -> type:
    """The trainer class named by ``spec``: a class (returned as is), a registered trainer's class name
    (``"TopKTrainer"``) or ``"package.module:Class"`` (a user's trainer, imported; importing its module also runs
    any ``register(...)`` in it). Cheap: it is how the command lines check ``--config`` before any harvesting.

    Raises:
        ValueError: an unknown name (the message lists the registered ones), a module that cannot be imported or
            lacks the name, or an object that is not a subclass of :class:`~.trainers.base.SAETrainer`.
    """
    from .trainers.base import SAETrainer

    cls = spec
    if isinstance(spec, str):
        if ":" in spec:
            cls = import_object(spec)
        else:
            known = trainer_classes()
            if spec not in known:
                raise ValueError(f"unknown trainer {spec!r}; known: {sorted(known)} (or 'package.module:Class' for "
                                 f"a trainer of your own)")
            cls = known[spec]
    if not (isinstance(cls, type) and issubclass(cls, SAETrainer)):
        raise ValueError(f"trainer {spec!r} is not a subclass of SAETrainer (got {cls!r})")
    return cls
