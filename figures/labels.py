"""Names the figures and tables print: the registered architectures' order and labels (read from
:mod:`dictionary_learning_aligned.registry`), the sparsity parameters' labels, and the note that heads outputs of
records of scale smoke."""

from __future__ import annotations

from dictionary_learning_aligned import registry

#: registered architectures in registration order: the paper's four first, then the extensions
ARCH_ORDER = tuple(registry.names())
#: label per architecture; architectures that arXiv 2605.18629 does not evaluate say so
class _ArchLabels(dict):
    """Figure and table labels of the registered architectures, read from the registry at each lookup, so that an
    architecture registered after this module was imported (a user's plug-in) is labelled too; extensions that
    arXiv 2605.18629 does not evaluate are marked "(not in paper)". Unknown names raise KeyError."""

    def __missing__(self, name):
        arch = next((a for a in registry.architectures() if a.name == name), None)
        if arch is None:
            raise KeyError(name)
        return arch.label if arch.in_paper else f"{arch.label} (not in paper)"

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default


ARCH_LABEL = _ArchLabels()
SPARSITY_LABEL = {"l1_penalty": "L1 penalty", "k": "k", "initial_sparsity_penalty": "initial penalty",
                  "target_l0": "target L0"}


#: what a table or claims output of records of scale smoke says first
SMOKE_NOTE = "scale smoke: these dictionaries test the pipeline, not the paper"
